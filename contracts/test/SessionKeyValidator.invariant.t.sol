// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {TestUSDC} from "../src/TestUSDC.sol";
import {Test, console} from "./utils/Test.sol";
import {ValidatorHandler} from "./handlers/ValidatorHandler.sol";

/// @notice DESIGN §2's invariants, held over random sequences of deposits, registrations,
///         vouchers, settlements, replays, freezes, revocations, withdrawals and time jumps
///         (256 runs × 64 calls by default).
contract SessionKeyValidatorInvariantTest is Test {
    uint256 internal constant T0 = 1_700_000_000;

    TestUSDC internal usdc;
    SessionKeyValidator internal validator;
    SessionKeyValidator internal twin;
    ValidatorHandler internal handler;

    function setUp() public {
        vm.warp(T0);
        usdc = new TestUSDC();
        validator = new SessionKeyValidator("opentab", "1", IERC20(address(usdc)), 1 days);
        twin = new SessionKeyValidator("opentab", "1", IERC20(address(usdc)), 1 days);
        handler = new ValidatorHandler(validator, twin, usdc);

        // A funded starting point, so that most sequences reach settlement quickly.
        for (uint256 i; i < 3; ++i) {
            handler.deposit(i, 1_000_000_000);
            handler.register(i, i, 200_000_000, 1, 4 days + i);
            handler.signVoucher(i, 5_000_000);
        }

        bytes4[] memory selectors = new bytes4[](22);
        selectors[0] = ValidatorHandler.deposit.selector;
        selectors[1] = ValidatorHandler.requestWithdrawal.selector;
        selectors[2] = ValidatorHandler.cancelWithdrawal.selector;
        selectors[3] = ValidatorHandler.withdraw.selector;
        selectors[4] = ValidatorHandler.register.selector;
        selectors[5] = ValidatorHandler.signVoucher.selector;
        selectors[6] = ValidatorHandler.settle.selector;
        selectors[7] = ValidatorHandler.settleBatch.selector;
        selectors[8] = ValidatorHandler.replayOldVoucher.selector;
        selectors[9] = ValidatorHandler.replayCrossKey.selector;
        selectors[10] = ValidatorHandler.replayCrossPayee.selector;
        selectors[11] = ValidatorHandler.replayCrossChain.selector;
        selectors[12] = ValidatorHandler.replayCrossDeployment.selector;
        selectors[13] = ValidatorHandler.settleUnregistered.selector;
        selectors[14] = ValidatorHandler.freeze.selector;
        selectors[15] = ValidatorHandler.unfreeze.selector;
        selectors[16] = ValidatorHandler.revoke.selector;
        selectors[17] = ValidatorHandler.warp.selector;
        // Settlement and signing are what the system is for: give them a second ticket each.
        selectors[18] = ValidatorHandler.signVoucher.selector;
        selectors[19] = ValidatorHandler.settle.selector;
        selectors[20] = ValidatorHandler.warpToEdge.selector;
        selectors[21] = ValidatorHandler.hijackKey.selector;
        targetSelector(FuzzSelector(address(handler), selectors));
        targetContract(address(handler));
    }

    // ------------------------------------------------------------------ money

    /// Tokens in (deposits) = tokens out (payouts + withdrawals) + the contract's balance.
    function invariant_tokensConserved() public view {
        vm.assertEq(
            handler.ghost_deposits(),
            handler.ghost_payouts() + handler.ghost_withdrawals() + usdc.balanceOf(address(validator)),
            "deposits != payouts + withdrawals + balance"
        );
    }

    /// The contract's balance equals the sum of all escrows.
    function invariant_balanceEqualsSumOfEscrows() public view {
        uint256 sum;
        for (uint256 i; i < handler.ownerCount(); ++i) {
            sum += validator.escrowOf(handler.owners(i));
        }
        vm.assertEq(usdc.balanceOf(address(validator)), sum, "balance != sum of escrows");
    }

    /// Each owner's escrow is what it deposited minus what left for it, and what left for it
    /// (payouts of its keys + withdrawals) never exceeds what it deposited.
    function invariant_ownerOutflowsWithinDeposits() public view {
        for (uint256 i; i < handler.ownerCount(); ++i) {
            address o = handler.owners(i);
            vm.assertEq(validator.escrowOf(o), handler.ghost_escrow(o), "escrow != model");
            vm.assertLe(handler.ghost_outflowOf(o), handler.ghost_depositedBy(o), "outflow above deposits");
            vm.assertEq(
                handler.ghost_outflowOf(o) + validator.escrowOf(o), handler.ghost_depositedBy(o), "owner not conserved"
            );
        }
    }

    /// A payee holds exactly the sum of what its keys settled: never more than their highest
    /// vouchers or limits, and only through settlement.
    function invariant_payeesReceiveExactlyWhatTheirKeysSettled() public view {
        vm.assertFalse(handler.ghost_payeeMismatch(), "a payee's balance moved by other than the payout");
        for (uint256 p; p < handler.payeeCount(); ++p) {
            address payee = handler.payees(p);
            uint256 sum;
            for (uint256 i; i < handler.keyCount(); ++i) {
                address k = handler.keys(i);
                SessionKeyValidator.SessionKey memory s = validator.sessionKeyOf(k);
                if (s.payee == payee) sum += s.settled;
            }
            vm.assertEq(usdc.balanceOf(payee), sum, "payee balance != sum of settled");
            vm.assertEq(handler.ghost_paidTo(payee), sum, "payee model != sum of settled");
        }
    }

    /// No key's settled amount exceeds its highest signed voucher or its limit.
    function invariant_settledWithinHighestVoucherAndLimit() public view {
        vm.assertFalse(handler.ghost_overpaid(), "a settlement paid more than its delta");
        for (uint256 i; i < handler.keyCount(); ++i) {
            address k = handler.keys(i);
            SessionKeyValidator.SessionKey memory s = validator.sessionKeyOf(k);
            ValidatorHandler.KeyModel memory m = handler.modelOf(k);
            vm.assertLe(s.settled, m.highestSigned, "settled above the highest voucher");
            vm.assertLe(s.settled, s.limit, "settled above the limit");
            vm.assertEq(s.limit, m.limit, "limit changed");
            vm.assertEq(s.payee, m.payee, "payee changed");
            vm.assertEq(s.owner, m.owner, "owner changed");
        }
    }

    // ------------------------------------------------------------ vouchers

    /// settled[key] only grows, and only through a settlement.
    function invariant_settledOnlyGrows() public view {
        vm.assertFalse(handler.ghost_settledDecreased(), "settled decreased");
        vm.assertFalse(handler.ghost_settledUnexpectedly(), "settled moved outside a settlement");
        for (uint256 i; i < handler.keyCount(); ++i) {
            address k = handler.keys(i);
            vm.assertGe(validator.sessionKeyOf(k).settled, handler.modelOf(k).lastSettled, "below last seen");
        }
    }

    /// No voucher settles twice.
    function invariant_noVoucherSettlesTwice() public view {
        vm.assertFalse(handler.ghost_replaySucceeded(), "a voucher settled twice");
    }

    /// No voucher settles on another chain, deployment, key or payee.
    function invariant_noCrossDomainReplay() public view {
        vm.assertFalse(handler.ghost_crossChainSucceeded(), "settled on another chain");
        vm.assertFalse(handler.ghost_crossDeploymentSucceeded(), "settled on another deployment");
        vm.assertFalse(handler.ghost_crossKeySucceeded(), "settled for another key");
        vm.assertFalse(handler.ghost_crossPayeeSucceeded(), "settled for another payee");
    }

    /// An unregistered key settles nothing.
    function invariant_unregisteredKeySettlesNothing() public view {
        vm.assertFalse(handler.ghost_unregisteredSettled(), "an unregistered key settled");
        for (uint256 i; i < handler.probedCount(); ++i) {
            SessionKeyValidator.SessionKey memory s = validator.sessionKeyOf(handler.probedUnregistered(i));
            vm.assertEq(s.owner, address(0), "became registered");
            vm.assertEq(s.settled, 0, "settled without registration");
        }
    }

    /// Frozen, revoked and expired keys settle only within GRACE of when they stopped, and
    /// nothing settles before validAfter.
    function invariant_settlesOnlyInsideTheWindow() public view {
        vm.assertFalse(handler.ghost_settledOutsideWindow(), "settled after stop + GRACE");
        vm.assertFalse(handler.ghost_settledBeforeValid(), "settled before validAfter");
    }

    /// A voucher the model says is good always settles (nobody can dodge a bill).
    function invariant_validVouchersSettle() public view {
        vm.assertFalse(handler.ghost_validSettleRefused(), "a valid voucher was refused");
    }

    /// Withdrawals wait GRACE, pay min(requested, escrow); only the owner and its guardian
    /// can stop a key, only the owner can restart it, and nobody can register it again.
    function invariant_withdrawalsAndKeyActionsFollowTheRules() public view {
        vm.assertFalse(handler.ghost_withdrewEarly(), "withdrew before readyAt");
        vm.assertFalse(handler.ghost_withdrawMismatch(), "withdrawal paid the wrong amount or was refused");
        vm.assertFalse(handler.ghost_unauthorizedKeyAction(), "unauthorised freeze or unfreeze");
        vm.assertFalse(handler.ghost_keyOverwritten(), "a registered key was registered again");
    }

    /// Once per run: how much the handler really exercised (shown with `-vv`).
    function afterInvariant() public view {
        console.log("settle calls", handler.calls_settle());
        console.log("settle ok", handler.calls_settleOk());
        console.log("settleBatch calls", handler.calls_settleBatch());
        console.log("settleBatch ok", handler.calls_settleBatchOk());
        console.log("replays (old)", handler.calls_replay());
        console.log("replays (cross)", handler.calls_crossReplay());
        console.log("withdraw calls", handler.calls_withdraw());
        console.log("withdraw ok", handler.calls_withdrawOk());
        console.log("keys", handler.keyCount());
        console.log("warps", handler.calls_warp());
    }
}
