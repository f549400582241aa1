// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SessionKeyValidator} from "../../src/SessionKeyValidator.sol";
import {TestUSDC} from "../../src/TestUSDC.sol";
import {Test} from "./Test.sol";
import {Digests} from "./Digests.sol";

/// @notice A deployed validator with named actors and helpers that sign with digests the
///         test computes itself (see `Digests`).
abstract contract ValidatorFixture is Test {
    string internal constant NAME = "opentab";
    string internal constant VERSION = "1";
    uint256 internal constant GRACE = 1 days;
    uint256 internal constant T0 = 1_700_000_000;
    uint256 internal constant USDC_1 = 1_000_000;
    uint128 internal constant LIMIT = 100_000_000; // 100 USDC
    uint48 internal constant LIFETIME = 30 days;

    TestUSDC internal usdc;
    SessionKeyValidator internal validator;

    uint256 internal constant OWNER_PK = 0xA11CE;
    uint256 internal constant KEY_PK = 0xBEEF01;
    uint256 internal constant KEY2_PK = 0xBEEF02;
    uint256 internal constant KEY3_PK = 0xBEEF03;
    uint256 internal constant GUARDIAN_PK = 0x6A2D;
    uint256 internal constant OTHER_PK = 0xBAD;

    address internal owner;
    address internal key;
    address internal key2;
    address internal key3;
    address internal guardian;
    address internal payee = address(0xFEE1);
    address internal payee2 = address(0xFEE2);
    address internal stranger = address(0x5778);
    address internal relayer = address(0x4E1A);

    function setUp() public virtual {
        vm.warp(T0);
        usdc = new TestUSDC();
        validator = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), GRACE);
        owner = vm.addr(OWNER_PK);
        key = vm.addr(KEY_PK);
        key2 = vm.addr(KEY2_PK);
        key3 = vm.addr(KEY3_PK);
        guardian = vm.addr(GUARDIAN_PK);
        vm.label(address(usdc), "USDC");
        vm.label(address(validator), "validator");
        vm.label(owner, "owner");
        vm.label(key, "key");
        vm.label(key2, "key2");
        vm.label(key3, "key3");
        vm.label(guardian, "guardian");
        vm.label(payee, "payee");
        vm.label(payee2, "payee2");
        vm.label(stranger, "stranger");
        vm.label(relayer, "relayer");
    }

    // ------------------------------------------------------------- digests

    function _separator(address verifyingContract) internal view returns (bytes32) {
        return Digests.domainSeparator(NAME, VERSION, block.chainid, verifyingContract);
    }

    function _sign(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev A voucher for `validator` on the current chain.
    function _voucher(uint256 pk, address sessionKey, address to, uint256 cumulativeAmount)
        internal
        view
        returns (bytes memory)
    {
        return _sign(pk, Digests.voucher(_separator(address(validator)), sessionKey, to, cumulativeAmount));
    }

    /// @dev The usual voucher: `pk` signs for its own address and `to`.
    function _voucher(uint256 pk, address to, uint256 cumulativeAmount) internal view returns (bytes memory) {
        return _voucher(pk, vm.addr(pk), to, cumulativeAmount);
    }

    function _registrationSig(
        uint256 pk,
        address sessionKey,
        address to,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil,
        uint256 nonce,
        uint256 deadline
    ) internal view returns (bytes memory) {
        return _sign(
            pk,
            Digests.registration(
                _separator(address(validator)),
                vm.addr(pk),
                sessionKey,
                to,
                limit,
                validAfter,
                validUntil,
                nonce,
                deadline
            )
        );
    }

    /// @dev `pk`'s signature over a `RegisterSessionKeys` of `keys` for `validator`.
    function _registrationsSig(
        uint256 pk,
        SessionKeyValidator.KeyTerms[] memory keys,
        uint256 nonce,
        uint256 deadline
    ) internal view returns (bytes memory) {
        return _sign(pk, Digests.registrations(_separator(address(validator)), vm.addr(pk), keys, nonce, deadline));
    }

    function _actionSig(uint256 pk, bytes32 typehash, address sessionKey, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        return _sign(pk, Digests.keyAction(_separator(address(validator)), typehash, sessionKey, nonce, deadline));
    }

    // --------------------------------------------------------------- setup

    /// @dev Opens (or tops up) `who`'s tab with `to`.
    function _deposit(address who, address to, uint256 amount) internal {
        usdc.mint(who, amount);
        vm.startPrank(who);
        usdc.approve(address(validator), amount);
        validator.deposit(to, amount);
        vm.stopPrank();
    }

    /// @dev The usual tab: `who` with `payee`.
    function _deposit(address who, uint256 amount) internal {
        _deposit(who, payee, amount);
    }

    function _tab(address who, address to) internal view returns (uint256 balance) {
        (balance,,) = validator.tabOf(who, to);
    }

    function _settlerSig(uint256 pk, address settler, bool allowed, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        return _sign(pk, Digests.setSettler(_separator(address(validator)), vm.addr(pk), settler, allowed, nonce, deadline));
    }

    /// @dev Registers `sessionKey` for `who`, valid from now for `LIFETIME`.
    function _register(address who, address sessionKey, address to, uint128 limit) internal {
        vm.prank(who);
        validator.registerSessionKey(
            sessionKey, to, limit, u48(block.timestamp), u48(block.timestamp + LIFETIME)
        );
    }

    /// @dev The owner's usual setup: a 1,000 USDC tab with `payee` and `key` registered for it.
    function _fundAndRegister() internal {
        _deposit(owner, 1_000 * USDC_1);
        _register(owner, key, payee, LIMIT);
    }

    /// @dev Lets `relayer` settle for `to`, as a payee authorises its settlement worker.
    function _allowRelayer(address to) internal {
        vm.prank(to);
        validator.setSettler(relayer, true);
    }

    /// @dev Settles as `relayer` (a settler of the key's payee, see `_allowRelayer`).
    function _settle(address sessionKey, uint256 amount, bytes memory sig) internal returns (uint256) {
        vm.prank(relayer);
        return validator.settle(sessionKey, amount, sig);
    }

    function _settled(address sessionKey) internal view returns (uint256) {
        return validator.sessionKeyOf(sessionKey).settled;
    }
}
