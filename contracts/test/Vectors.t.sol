// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {TestUSDC} from "../src/TestUSDC.sol";
import {Test} from "./utils/Test.sol";
import {Digests} from "./utils/Digests.sol";

/// @notice The contract against `testdata/vectors/voucher-eip712.json`: 20 voucher vectors made
///         with eth-account (independent of opentab) over several domains, chains and amounts
///         up to 2^256-1. Each case's validator is placed at the case's verifyingContract.
contract VectorsTest is Test {
    string internal constant PATH = "../testdata/vectors/voucher-eip712.json";
    uint256 internal constant CASES = 20;
    /// @dev Cases up to this amount are funded and settled for real.
    uint256 internal constant SETTLE_MAX = 1e15;

    struct Case {
        string name;
        string version;
        uint256 chainId;
        address verifyingContract;
        address sessionKey;
        address payee;
        uint256 amount;
        bytes32 domainSeparator;
        bytes32 structHash;
        bytes32 digest;
        uint256 privateKey;
        bytes signature;
    }

    TestUSDC internal usdc;
    string internal json;

    function setUp() public {
        vm.warp(1_700_000_000);
        usdc = new TestUSDC();
        json = vm.readFile(PATH);
    }

    function _case(uint256 i) internal view returns (Case memory c) {
        string memory p = string.concat(".cases[", vm.toString(i), "]");
        c.name = vm.parseJsonString(json, string.concat(p, ".domain.name"));
        c.version = vm.parseJsonString(json, string.concat(p, ".domain.version"));
        c.chainId = vm.parseJsonUint(json, string.concat(p, ".domain.chainId"));
        c.verifyingContract = vm.parseJsonAddress(json, string.concat(p, ".domain.verifyingContract"));
        c.sessionKey = vm.parseJsonAddress(json, string.concat(p, ".message.sessionKey"));
        c.payee = vm.parseJsonAddress(json, string.concat(p, ".message.payee"));
        // A decimal string in the file; parseJsonUint reads it as a number (up to 2^256-1).
        c.amount = vm.parseJsonUint(json, string.concat(p, ".message.cumulativeAmount"));
        c.domainSeparator = vm.parseJsonBytes32(json, string.concat(p, ".domainSeparator"));
        c.structHash = vm.parseJsonBytes32(json, string.concat(p, ".structHash"));
        c.digest = vm.parseJsonBytes32(json, string.concat(p, ".digest"));
        c.privateKey = uint256(vm.parseJsonBytes32(json, string.concat(p, ".signerPrivateKey")));
        c.signature = vm.parseJsonBytes(json, string.concat(p, ".signature"));
    }

    function _msg(uint256 i, string memory what) internal pure returns (string memory) {
        return string.concat("case ", vm.toString(i), ": ", what);
    }

    /// @dev Deploys a validator for the case's domain and moves its code to verifyingContract.
    function _validatorAt(Case memory c) internal returns (SessionKeyValidator v) {
        vm.chainId(c.chainId);
        SessionKeyValidator impl = new SessionKeyValidator(c.name, c.version, IERC20(address(usdc)), 1 days);
        vm.etch(c.verifyingContract, address(impl).code);
        v = SessionKeyValidator(c.verifyingContract);
    }

    function test_vectors_fileHoldsExactlyTwentyCases() public view {
        vm.assertTrue(vm.parseJsonAddress(json, ".cases[19].message.sessionKey") != address(0), "case 19 exists");
        try vm.parseJsonAddress(json, ".cases[20].message.sessionKey") returns (address extra) {
            vm.assertEq(extra, address(0), "a 21st case is not covered by these tests");
        } catch {}
    }

    function test_vectors_typeStringIsTheContractsVoucherType() public {
        SessionKeyValidator v = new SessionKeyValidator("opentab", "1", IERC20(address(usdc)), 1 days);
        vm.assertEq(
            keccak256(bytes(vm.parseJsonString(json, ".typeString"))), v.VOUCHER_TYPEHASH(), "typeString"
        );
        vm.assertEq(v.VOUCHER_TYPEHASH(), Digests.VOUCHER_TYPEHASH, "test library typehash");
    }

    function test_vectors_hashesMatchTheFile() public {
        for (uint256 i; i < CASES; ++i) {
            Case memory c = _case(i);
            SessionKeyValidator v = _validatorAt(c);
            // The test's own EIP-712 code against the file, then the contract against both.
            vm.assertEq(
                Digests.domainSeparator(c.name, c.version, c.chainId, c.verifyingContract),
                c.domainSeparator,
                _msg(i, "independent domainSeparator")
            );
            vm.assertEq(v.domainSeparator(), c.domainSeparator, _msg(i, "domainSeparator"));
            vm.assertEq(
                keccak256(abi.encode(v.VOUCHER_TYPEHASH(), c.sessionKey, c.payee, c.amount)),
                c.structHash,
                _msg(i, "structHash")
            );
            vm.assertEq(
                Digests.typed(c.domainSeparator, c.structHash), c.digest, _msg(i, "digest = 0x1901 || ds || sh")
            );
            vm.assertEq(v.voucherDigest(c.sessionKey, c.payee, c.amount), c.digest, _msg(i, "voucherDigest"));
        }
    }

    function test_vectors_signaturesRecoverTheSessionKey() public view {
        for (uint256 i; i < CASES; ++i) {
            Case memory c = _case(i);
            vm.assertEq(vm.addr(c.privateKey), c.sessionKey, _msg(i, "private key is the session key"));
            vm.assertEq(c.signature.length, 65, _msg(i, "r||s||v"));
            bytes memory sig = c.signature;
            bytes32 r;
            bytes32 s;
            uint8 v;
            assembly ("memory-safe") {
                r := mload(add(sig, 0x20))
                s := mload(add(sig, 0x40))
                v := byte(0, mload(add(sig, 0x60)))
            }
            vm.assertEq(ecrecover(c.digest, v, r, s), c.sessionKey, _msg(i, "ecrecover"));
            vm.assertEq(ECDSA.recover(c.digest, c.signature), c.sessionKey, _msg(i, "OpenZeppelin ECDSA"));
        }
    }

    /// Every case goes through `settle` at its own domain, sent by the case's payee: small
    /// amounts are paid for real; larger ones pass the signature check and stop at the empty
    /// tab (or at the uint128 limit); zero has nothing to settle.
    function test_vectors_settleWithTheFilesSignatures() public {
        uint256 paidCases;
        for (uint256 i; i < CASES; ++i) {
            Case memory c = _case(i);
            SessionKeyValidator v = _validatorAt(c);
            uint128 limit = c.amount == 0
                ? 1
                : c.amount > type(uint128).max ? type(uint128).max : uint128(c.amount);
            v.registerSessionKey(c.sessionKey, c.payee, limit, 0, u48(block.timestamp + 1 days));

            if (c.amount == 0) {
                vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, c.sessionKey, 0, 0));
                vm.prank(c.payee);
                v.settle(c.sessionKey, 0, c.signature);
            } else if (c.amount <= SETTLE_MAX) {
                usdc.mint(address(this), c.amount);
                usdc.approve(address(v), c.amount);
                v.deposit(c.payee, c.amount);
                uint256 before = usdc.balanceOf(c.payee);
                vm.expectEmit(true, true, true, true, address(v));
                emit SessionKeyValidator.Settled(c.sessionKey, c.amount, c.amount);
                vm.prank(c.payee);
                v.settle(c.sessionKey, c.amount, c.signature);
                vm.assertEq(usdc.balanceOf(c.payee) - before, c.amount, _msg(i, "payee paid"));
                vm.assertEq(v.sessionKeyOf(c.sessionKey).settled, c.amount, _msg(i, "settled"));
                (uint128 tab,,) = v.tabOf(address(this), c.payee);
                vm.assertEq(tab, 0, _msg(i, "tab spent"));
                ++paidCases;
            } else if (c.amount <= type(uint128).max) {
                // The signature is checked before the tab: reaching EmptyTab means the contract
                // accepted the file's signature.
                vm.expectRevert(
                    abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, address(this), c.payee)
                );
                vm.prank(c.payee);
                v.settle(c.sessionKey, c.amount, c.signature);
            } else {
                vm.expectRevert(
                    abi.encodeWithSelector(
                        SessionKeyValidator.VoucherAboveLimit.selector, c.sessionKey, c.amount, type(uint128).max
                    )
                );
                vm.prank(c.payee);
                v.settle(c.sessionKey, c.amount, c.signature);
            }
        }
        vm.assertEq(paidCases, 8, "cases settled for real");
    }

    /// The file's signatures are bound to their domain: at another chain id they are refused.
    function test_vectors_signaturesFailOnAnotherChain() public {
        for (uint256 i; i < CASES; ++i) {
            Case memory c = _case(i);
            if (c.amount == 0 || c.amount > type(uint128).max) continue;
            SessionKeyValidator v = _validatorAt(c);
            v.registerSessionKey(c.sessionKey, c.payee, uint128(c.amount), 0, u48(block.timestamp + 1 days));
            vm.chainId(c.chainId + 1);
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, c.sessionKey));
            vm.prank(c.payee);
            v.settle(c.sessionKey, c.amount, c.signature);
        }
    }
}
