// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {ValidatorFixture} from "./utils/Fixture.sol";
import {Digests} from "./utils/Digests.sol";

/// @notice One measured call per operation, written to `snapshots/GasTest.json`.
/// @dev All preparation happens in `setUp`, a transaction of its own, so every measured call
///      starts with cold storage as it would on chain. Figures are the callee's gas (no
///      21,000 base, no calldata). Settlements are sent by `relayer`, a settler each payee
///      authorised, as opentab's settlement worker sends them; `settle_next_byPayee` is the
///      same call sent by the payee itself.
contract GasTest is ValidatorFixture {
    uint256 internal constant BATCH = 10;
    uint256 internal constant BATCH_PK_BASE = 0xBA7C00;

    address internal depositor = address(0xD5);
    address internal withdrawer = address(0x3D);
    address internal payeeNext = address(0xFEE3);
    address internal payeeBatch = address(0xFEE4);
    uint256 internal constant FREEZE_PK = 0xF1;
    uint256 internal constant UNFREEZE_PK = 0xF2;
    uint256 internal constant REVOKE_PK = 0xF3;

    function setUp() public override {
        super.setUp();
        _deposit(owner, payee, 10_000 * USDC_1);
        _deposit(owner, payeeNext, 10_000 * USDC_1);
        _deposit(owner, payeeBatch, 10_000 * USDC_1);
        for (uint256 i; i < 3; ++i) {
            vm.prank([payee, payeeNext, payeeBatch][i]);
            validator.setSettler(relayer, true);
        }

        // deposit: a new owner with tokens and an allowance.
        usdc.mint(depositor, 100 * USDC_1);
        vm.prank(depositor);
        usdc.approve(address(validator), 100 * USDC_1);

        // settle_first: key, never settled, payee with no balance yet.
        _register(owner, key, payee, LIMIT);
        // settle_next: key2 settled once, its payee already holds tokens.
        _register(owner, key2, payeeNext, LIMIT);
        vm.prank(relayer);
        validator.settle(key2, 5 * USDC_1, _voucher(KEY2_PK, payeeNext, 5 * USDC_1));
        // settleBatch_10keys: ten keys, one payee.
        for (uint256 i; i < BATCH; ++i) {
            _register(owner, vm.addr(BATCH_PK_BASE + i), payeeBatch, LIMIT);
        }
        // freeze / unfreeze / revoke.
        _register(owner, vm.addr(FREEZE_PK), payee, LIMIT);
        _register(owner, vm.addr(UNFREEZE_PK), payee, LIMIT);
        vm.prank(owner);
        validator.freeze(vm.addr(UNFREEZE_PK));
        _register(owner, vm.addr(REVOKE_PK), payee, LIMIT);
        // withdraw: a request made at T0.
        _deposit(withdrawer, payee, 50 * USDC_1);
        vm.prank(withdrawer);
        validator.requestWithdrawal(payee, 50 * USDC_1);
    }

    function test_gas_deposit() public {
        vm.prank(depositor);
        validator.deposit(payee, 100 * USDC_1);
        vm.snapshotGasLastCall("deposit");
        vm.assertEq(_tab(depositor, payee), 100 * USDC_1, "deposited");
    }

    function test_gas_registerSessionKey() public {
        vm.prank(owner);
        validator.registerSessionKey(key3, payee, LIMIT, u48(T0), u48(T0 + LIFETIME));
        vm.snapshotGasLastCall("registerSessionKey");
        vm.assertEq(validator.sessionKeyOf(key3).owner, owner, "registered");
    }

    function test_gas_registerSessionKeys_100keys() public {
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](100);
        for (uint256 i; i < 100; ++i) {
            keys[i] = SessionKeyValidator.KeyTerms(
                vm.addr(0x5E55000 + i), payee, LIMIT, u48(T0), u48(T0 + LIFETIME)
            );
        }
        vm.prank(owner);
        validator.registerSessionKeys(keys);
        vm.snapshotGasLastCall("registerSessionKeys_100keys");
        vm.assertEq(validator.sessionKeyOf(vm.addr(0x5E55000 + 99)).owner, owner, "registered");
    }

    function test_gas_registerSessionKeysWithSig_100keys() public {
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](100);
        for (uint256 i; i < 100; ++i) {
            keys[i] = SessionKeyValidator.KeyTerms(
                vm.addr(0x5E55000 + i), payee, LIMIT, u48(T0), u48(T0 + LIFETIME)
            );
        }
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, T0);
        vm.prank(relayer);
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, sig);
        vm.snapshotGasLastCall("registerSessionKeysWithSig_100keys");
        vm.assertEq(validator.sessionKeyOf(vm.addr(0x5E55000 + 99)).owner, owner, "registered");
    }

    function test_gas_registerSessionKeyWithSig() public {
        bytes memory sig = _registrationSig(OWNER_PK, key3, payee, LIMIT, u48(T0), u48(T0 + LIFETIME), 0, T0);
        vm.prank(relayer);
        validator.registerSessionKeyWithSig(key3, payee, LIMIT, u48(T0), u48(T0 + LIFETIME), owner, 0, T0, sig);
        vm.snapshotGasLastCall("registerSessionKeyWithSig");
        vm.assertEq(validator.sessionKeyOf(key3).owner, owner, "registered");
    }

    function test_gas_freeze() public {
        vm.prank(owner);
        validator.freeze(vm.addr(FREEZE_PK));
        vm.snapshotGasLastCall("freeze");
        vm.assertEq(validator.sessionKeyOf(vm.addr(FREEZE_PK)).frozenAt, T0, "frozen");
    }

    function test_gas_unfreeze() public {
        vm.prank(owner);
        validator.unfreeze(vm.addr(UNFREEZE_PK));
        vm.snapshotGasLastCall("unfreeze");
        vm.assertEq(validator.sessionKeyOf(vm.addr(UNFREEZE_PK)).frozenAt, 0, "unfrozen");
    }

    function test_gas_revoke() public {
        vm.prank(owner);
        validator.revoke(vm.addr(REVOKE_PK));
        vm.snapshotGasLastCall("revoke");
        vm.assertEq(validator.sessionKeyOf(vm.addr(REVOKE_PK)).revokedAt, T0, "revoked");
    }

    function test_gas_settle_first() public {
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1);
        vm.prank(relayer);
        validator.settle(key, 10 * USDC_1, sig);
        uint256 gasUsed = vm.snapshotGasLastCall("settle_first");
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid");
        vm.assertLe(gasUsed, 60_000, "settle within budget");
    }

    function test_gas_setSettler() public {
        vm.prank(payee2);
        validator.setSettler(relayer, true);
        vm.snapshotGasLastCall("setSettler");
        vm.assertTrue(validator.isSettler(payee2, relayer), "authorised");
    }

    function test_gas_settle_next() public {
        bytes memory sig = _voucher(KEY2_PK, payeeNext, 15 * USDC_1);
        vm.prank(relayer);
        validator.settle(key2, 15 * USDC_1, sig);
        uint256 gasUsed = vm.snapshotGasLastCall("settle_next");
        vm.assertEq(usdc.balanceOf(payeeNext), 15 * USDC_1, "paid the delta");
        vm.assertLe(gasUsed, 40_000, "settle within budget");
    }

    function test_gas_settle_next_byPayee() public {
        bytes memory sig = _voucher(KEY2_PK, payeeNext, 15 * USDC_1);
        vm.prank(payeeNext);
        validator.settle(key2, 15 * USDC_1, sig);
        uint256 gasUsed = vm.snapshotGasLastCall("settle_next_byPayee");
        vm.assertEq(usdc.balanceOf(payeeNext), 15 * USDC_1, "paid the delta");
        vm.assertLe(gasUsed, 40_000, "settle within budget");
    }

    function test_gas_settleBatch_10keys() public {
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](BATCH);
        for (uint256 i; i < BATCH; ++i) {
            uint256 pk = BATCH_PK_BASE + i;
            claims[i] = SessionKeyValidator.Claim(
                vm.addr(pk),
                USDC_1,
                _sign(pk, Digests.voucher(_separator(address(validator)), vm.addr(pk), payeeBatch, USDC_1))
            );
        }
        vm.prank(relayer);
        validator.settleBatch(payeeBatch, claims);
        uint256 gasUsed = vm.snapshotGasLastCall("settleBatch_10keys");
        vm.assertEq(usdc.balanceOf(payeeBatch), BATCH * USDC_1, "paid");
        vm.assertLe(gasUsed, 23_000 * BATCH, "batch within budget per claim");
    }

    function test_gas_requestWithdrawal() public {
        vm.prank(owner);
        validator.requestWithdrawal(payee, 1_000 * USDC_1);
        vm.snapshotGasLastCall("requestWithdrawal");
        (, uint80 amount,) = validator.tabOf(owner, payee);
        vm.assertEq(amount, 1_000 * USDC_1, "requested");
    }

    function test_gas_withdraw() public {
        vm.warp(T0 + GRACE + 1);
        vm.prank(withdrawer);
        validator.withdraw(payee);
        vm.snapshotGasLastCall("withdraw");
        vm.assertEq(usdc.balanceOf(withdrawer), 50 * USDC_1, "withdrawn");
    }
}
