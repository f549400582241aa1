// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {ValidatorFixture} from "./utils/Fixture.sol";
import {Digests} from "./utils/Digests.sol";

/// @notice One named regression test per attack on vouchers, signatures and the grace rules.
contract AttacksTest is ValidatorFixture {
    function setUp() public override {
        super.setUp();
        _fundAndRegister(); // owner: 1,000 USDC; key -> payee, limit 100 USDC
    }

    // ============================================================== replays

    function test_attack_voucherReplayOnAnotherChainIsRefused() public {
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1); // signed on chain 31337
        vm.chainId(137); // the same contract address on a fork / another chain
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 10 * USDC_1, sig);

        vm.chainId(31337); // back home it is good
        validator.settle(key, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once, on its own chain");
    }

    function test_attack_voucherReplayOnAnotherDeploymentIsRefused() public {
        SessionKeyValidator other = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), GRACE);
        usdc.mint(owner, 1_000 * USDC_1);
        vm.startPrank(owner);
        usdc.approve(address(other), 1_000 * USDC_1);
        other.deposit(1_000 * USDC_1);
        other.registerSessionKey(key, payee, LIMIT, u48(T0), u48(T0 + LIFETIME));
        vm.stopPrank();

        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1); // for `validator`
        validator.settle(key, 10 * USDC_1, sig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        other.settle(key, 10 * USDC_1, sig);

        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once");
        vm.assertEq(other.escrowOf(owner), 1_000 * USDC_1, "other deployment's escrow untouched");
        vm.assertEq(other.sessionKeyOf(key).settled, 0, "nothing settled there");
    }

    function test_attack_voucherReplayForAnotherKeyIsRefused() public {
        _register(owner, key2, payee, LIMIT);
        // key's own voucher, submitted as key2's.
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key2));
        validator.settle(key2, 10 * USDC_1, sig);
        // key signing a voucher that names key2 does not help either: key2 did not sign it.
        bytes memory forged = _voucher(KEY_PK, key2, payee, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key2));
        validator.settle(key2, 10 * USDC_1, forged);
        vm.assertEq(_settled(key2), 0, "key2 settled nothing");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee got nothing");
    }

    function test_attack_voucherForAnotherPayeeIsRefused() public {
        // The agent is tricked into signing for payee2; key may only ever pay `payee`.
        bytes memory sig = _voucher(KEY_PK, payee2, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee2), 0, "payee2 got nothing");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee got nothing");
        vm.assertEq(_settled(key), 0, "nothing settled");
    }

    function test_attack_voucherForAPayeeOfAnotherKeyIsRefused() public {
        _register(owner, key2, payee2, LIMIT);
        // A real voucher of key2 (for payee2) cannot be routed to key's payee or vice versa.
        bytes memory sig = _voucher(KEY2_PK, payee2, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 10 * USDC_1, sig);
        validator.settle(key2, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee2), 10 * USDC_1, "payee2 paid by its own key");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee got nothing");
    }

    // ============================================== cross-purpose signatures

    function test_attack_registrationSignatureReusedAsVoucherIsRefused() public {
        // The owner registers its own address as a session key whose payee is the attacker…
        address attacker = stranger;
        _register(owner, owner, attacker, LIMIT);
        // …and signs some registration for a relayer, which the attacker sees.
        uint128 amount = 50_000_000; // 50 USDC
        bytes32 regDigest = Digests.registration(
            _separator(address(validator)), owner, key2, payee, amount, 0, u48(T0 + 1 days), 0, T0 + 1 hours
        );
        bytes memory regSig = _sign(OWNER_PK, regDigest);
        (uint8 v, bytes32 r, bytes32 s) = _split(regSig);
        vm.assertEq(ecrecover(regDigest, v, r, s), owner, "a genuine owner signature");

        // The attacker submits it as the owner-key's voucher, for any amount.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, owner));
        validator.settle(owner, amount, regSig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, owner));
        validator.settle(owner, 1, regSig);
        vm.assertEq(usdc.balanceOf(attacker), 0, "attacker got nothing");
        vm.assertEq(validator.escrowOf(owner), 1_000 * USDC_1, "escrow intact");

        // The signature still does what it was made for.
        validator.registerSessionKeyWithSig(key2, payee, amount, 0, u48(T0 + 1 days), owner, 0, T0 + 1 hours, regSig);
        vm.assertEq(validator.sessionKeyOf(key2).owner, owner, "registered");
    }

    function test_attack_voucherReusedAsRegistrationIsRefused() public {
        // The owner's own address as a session key signs a voucher; that signature must not
        // register anything.
        _register(owner, owner, payee, LIMIT);
        bytes memory voucherSig = _voucher(OWNER_PK, payee, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key2, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, voucherSig);
        vm.assertEq(validator.sessionKeyOf(key2).owner, address(0), "nothing registered");
    }

    function test_attack_freezeSignatureReusedAsUnfreezeOrRevokeIsRefused() public {
        bytes memory freezeSig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0 + 1 hours);

        // Unused, with the right nonce: still not a revocation…
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.revokeWithSig(key, 0, T0 + 1 hours, freezeSig);

        // …and not an unfreeze of a key the owner froze directly.
        vm.prank(owner);
        validator.freeze(key);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.unfreezeWithSig(key, 0, T0 + 1 hours, freezeSig);
        vm.prank(owner);
        validator.unfreeze(key);

        // Used once as a freeze, it is spent for every purpose.
        validator.freezeWithSig(key, 0, T0 + 1 hours, freezeSig);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.unfreezeWithSig(key, 0, T0 + 1 hours, freezeSig);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.revokeWithSig(key, 0, T0 + 1 hours, freezeSig);

        SessionKeyValidator.SessionKey memory k = validator.sessionKeyOf(key);
        vm.assertEq(k.frozenAt, T0, "still frozen");
        vm.assertEq(k.revokedAt, 0, "not revoked");
    }

    function test_attack_freezeSignatureForOneKeyDoesNotFreezeAnother() public {
        _register(owner, key2, payee, LIMIT);
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.freezeWithSig(key2, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key2).frozenAt, 0, "key2 not frozen");
    }

    // ========================================================== malleability

    function test_attack_highSTwinSignatureIsRefused() public {
        uint256 amount = 10 * USDC_1;
        bytes32 digest = Digests.voucher(_separator(address(validator)), key, payee, amount);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(KEY_PK, digest);
        bytes32 twinS = bytes32(Digests.SECP256K1_N - uint256(s));
        uint8 twinV = v == 27 ? 28 : 27;
        // The twin is a valid secp256k1 signature for the same key…
        vm.assertEq(ecrecover(digest, twinV, r, twinS), key, "raw ecrecover accepts the twin");

        // …but the contract refuses high-s signatures outright.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, amount, abi.encodePacked(r, twinS, twinV));

        validator.settle(key, amount, abi.encodePacked(r, s, v));
        vm.assertEq(usdc.balanceOf(payee), amount, "only the canonical signature pays");
    }

    // ========================================================== amount abuse

    function test_attack_settleAboveLimitIsRefused() public {
        uint256 amount = uint256(LIMIT) + 1;
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, amount, LIMIT));
        validator.settle(key, amount, _voucher(KEY_PK, payee, amount));
        // A compromised agent signs the maximum: only the limit can ever leave.
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, type(uint256).max, LIMIT)
        );
        validator.settle(key, type(uint256).max, _voucher(KEY_PK, payee, type(uint256).max));
        validator.settle(key, LIMIT, _voucher(KEY_PK, payee, LIMIT));
        vm.assertEq(usdc.balanceOf(payee), LIMIT, "payee capped at the limit");
    }

    function test_attack_settleAboveEscrowIsRefused() public {
        _register(owner, key2, payee, type(uint128).max);
        uint256 amount = 1_000 * USDC_1 + 1;
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, amount, 1_000 * USDC_1)
        );
        validator.settle(key2, amount, _voucher(KEY2_PK, payee, amount));
        vm.assertEq(usdc.balanceOf(payee), 0, "nothing paid");
    }

    function test_attack_escrowOfAnotherOwnerIsNeverTouched() public {
        _deposit(stranger, 500 * USDC_1);
        _register(owner, key2, payee, type(uint128).max);
        // key2's owner has 1,000; stranger's 500 cannot top it up.
        uint256 amount = 1_200 * USDC_1;
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, amount, 1_000 * USDC_1)
        );
        validator.settle(key2, amount, _voucher(KEY2_PK, payee, amount));
        vm.assertEq(validator.escrowOf(stranger), 500 * USDC_1, "stranger's escrow intact");
    }

    function test_attack_sameVoucherTwiceSettlesOnce() public {
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1);
        validator.settle(key, 10 * USDC_1, sig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 10 * USDC_1, 10 * USDC_1));
        validator.settle(key, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once");
    }

    function test_attack_olderLowerVoucherAfterAHigherOneSettlesNothing() public {
        bytes memory low = _voucher(KEY_PK, payee, 4 * USDC_1);
        validator.settle(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 4 * USDC_1, 10 * USDC_1)
        );
        validator.settle(key, 4 * USDC_1, low);
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid the highest voucher only");
    }

    function test_attack_sameVoucherTwiceInOneBatchSettlesOnce() public {
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = SessionKeyValidator.Claim(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        claims[1] = claims[0];
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 10 * USDC_1, 10 * USDC_1)
        );
        validator.settleBatch(claims);
        vm.assertEq(usdc.balanceOf(payee), 0, "batch rolled back");
    }

    // ======================================================= dodging the bill

    function test_attack_freezeToDodgeStillPaysWithinGrace() public {
        validator.settle(key, 5 * USDC_1, _voucher(KEY_PK, payee, 5 * USDC_1));
        // The gateway served more; the owner freezes before it settles.
        bytes memory owed = _voucher(KEY_PK, payee, 9 * USDC_1);
        vm.warp(T0 + 1 hours);
        vm.prank(owner);
        validator.freeze(key);

        vm.warp(T0 + 1 hours + GRACE); // last second of grace
        validator.settle(key, 9 * USDC_1, owed);
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "payee collected within grace");

        vm.warp(T0 + 1 hours + GRACE + 1);
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + 1 hours + GRACE)
        );
        validator.settle(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "nothing after grace");
    }

    function test_attack_guardianFreezeDoesNotDodgeEither() public {
        vm.prank(owner);
        validator.setGuardian(guardian);
        bytes memory owed = _voucher(KEY_PK, payee, 9 * USDC_1);
        vm.prank(guardian);
        validator.freeze(key);
        vm.warp(T0 + GRACE - 1);
        validator.settle(key, 9 * USDC_1, owed);
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "payee collected");
        // And the guardian cannot restart spending.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotKeyOwner.selector, key, guardian));
        vm.prank(guardian);
        validator.unfreeze(key);
    }

    function test_attack_refreezeCannotShortenTheWindow() public {
        vm.prank(owner);
        validator.freeze(key);
        vm.prank(owner);
        validator.unfreeze(key);
        vm.warp(T0 + 10);
        vm.prank(owner);
        validator.freeze(key);
        vm.assertEq(validator.settleableUntil(key), T0 + 10 + GRACE, "a later freeze only moves the window later");
    }

    function test_attack_settleAfterRevokePlusGraceIsRefused() public {
        bytes memory owed = _voucher(KEY_PK, payee, 3 * USDC_1);
        vm.prank(owner);
        validator.revoke(key);

        vm.warp(T0 + GRACE);
        validator.settle(key, 3 * USDC_1, owed);

        bytes memory late = _voucher(KEY_PK, payee, 4 * USDC_1);
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        validator.settle(key, 4 * USDC_1, late);
        vm.assertEq(usdc.balanceOf(payee), 3 * USDC_1, "only the in-grace voucher paid");
    }

    function test_attack_revokedKeyCannotBeReRegisteredToReviveVouchers() public {
        bytes memory old = _voucher(KEY_PK, payee, 3 * USDC_1);
        vm.prank(owner);
        validator.revoke(key);
        vm.warp(T0 + 2 * GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key));
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, u48(block.timestamp), u48(block.timestamp + 1 days));
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE)
        );
        validator.settle(key, 3 * USDC_1, old);
    }

    function test_attack_withdrawalRacingASettlementPaysThePayeeFirst() public {
        bytes memory owed = _voucher(KEY_PK, payee, 30 * USDC_1);
        vm.prank(owner);
        validator.requestWithdrawal(1_000 * USDC_1); // everything

        vm.warp(T0 + GRACE - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + GRACE)));
        vm.prank(owner);
        validator.withdraw();

        validator.settle(key, 30 * USDC_1, owed); // the payee settles during the wait

        vm.warp(T0 + GRACE);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, 970 * USDC_1);
        vm.prank(owner);
        uint256 out = validator.withdraw();

        vm.assertEq(out, 970 * USDC_1, "owner gets only the remainder");
        vm.assertEq(usdc.balanceOf(owner), 970 * USDC_1, "owner balance");
        vm.assertEq(usdc.balanceOf(payee), 30 * USDC_1, "payee paid in full");
        vm.assertEq(validator.escrowOf(owner), 0, "escrow empty");
        vm.assertEq(usdc.balanceOf(address(validator)), 0, "nothing stranded");
    }

    function test_attack_rerequestingAWithdrawalRestartsTheWait() public {
        vm.prank(owner);
        validator.requestWithdrawal(10 * USDC_1);
        vm.warp(T0 + GRACE - 10);
        vm.prank(owner);
        validator.requestWithdrawal(1_000 * USDC_1); // try to enlarge the ready request
        vm.warp(T0 + GRACE);
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + 2 * GRACE - 10))
        );
        vm.prank(owner);
        validator.withdraw();
    }

    function test_attack_keySquattingCannotSpendTheVictimsEscrow() public {
        // An attacker registers a victim agent's key address first, pointing it at itself.
        address attacker = stranger;
        _register(attacker, key3, attacker, LIMIT);
        // The victim's vouchers (for its payee) settle nothing against the attacker's entry…
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key3));
        validator.settle(key3, 5 * USDC_1, _voucher(KEY3_PK, payee, 5 * USDC_1));
        // …and a voucher the attacker gets for itself draws on the attacker's (empty) escrow only.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, attacker, 5 * USDC_1, 0));
        validator.settle(key3, 5 * USDC_1, _voucher(KEY3_PK, attacker, 5 * USDC_1));
        vm.assertEq(validator.escrowOf(owner), 1_000 * USDC_1, "victim escrow intact");
    }

    function _split(bytes memory sig) internal pure returns (uint8 v, bytes32 r, bytes32 s) {
        assembly ("memory-safe") {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
    }
}
