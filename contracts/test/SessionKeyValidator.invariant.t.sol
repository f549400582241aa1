// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {TestUSDC} from "../src/TestUSDC.sol";
import {Test, console} from "./utils/Test.sol";
import {ValidatorHandler} from "./handlers/ValidatorHandler.sol";

/// @notice DESIGN §2's invariants, held over random sequences of deposits to many payees,
///         registrations (self-payee keys of an adversarial owner included), vouchers,
///         settlements and batches by payees and their settlers, attacks by everyone else,
///         replays, freezes, revocations and their relayed forms, guardians, settler changes,
///         withdrawals racing settlements and time jumps (256 runs × 64 calls by default).
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

        // A funded starting point, so that most sequences reach settlement quickly: each owner
        // has a tab and a key with one honest payee, and a voucher signed.
        for (uint256 i; i < 3; ++i) {
            handler.deposit(i, i, 1_000_000_000);
            handler.register(i, i + 3, 200_000_000, 1, 4 days + i); // payee seed 3, 4, 5: payees 0, 1, 2
            handler.signVoucher(i, 5_000_000);
        }

        bytes4[] memory selectors = new bytes4[](32);
        selectors[0] = ValidatorHandler.deposit.selector;
        selectors[1] = ValidatorHandler.requestWithdrawal.selector;
        selectors[2] = ValidatorHandler.cancelWithdrawal.selector;
        selectors[3] = ValidatorHandler.withdraw.selector;
        selectors[4] = ValidatorHandler.withdrawRace.selector;
        selectors[5] = ValidatorHandler.register.selector;
        selectors[6] = ValidatorHandler.registerProbed.selector;
        selectors[7] = ValidatorHandler.signVoucher.selector;
        selectors[8] = ValidatorHandler.settle.selector;
        selectors[9] = ValidatorHandler.settleBatch.selector;
        selectors[10] = ValidatorHandler.attackerSettle.selector;
        selectors[11] = ValidatorHandler.selfPayeeDrain.selector;
        selectors[12] = ValidatorHandler.replayOldVoucher.selector;
        selectors[13] = ValidatorHandler.replayCrossKey.selector;
        selectors[14] = ValidatorHandler.replayCrossPayee.selector;
        selectors[15] = ValidatorHandler.replayCrossChain.selector;
        selectors[16] = ValidatorHandler.replayCrossDeployment.selector;
        selectors[17] = ValidatorHandler.settleUnregistered.selector;
        selectors[18] = ValidatorHandler.hijackKey.selector;
        selectors[19] = ValidatorHandler.freeze.selector;
        selectors[20] = ValidatorHandler.unfreeze.selector;
        selectors[21] = ValidatorHandler.revoke.selector;
        selectors[22] = ValidatorHandler.keyActionWithSig.selector;
        selectors[23] = ValidatorHandler.setGuardian.selector;
        selectors[24] = ValidatorHandler.setSettler.selector;
        selectors[25] = ValidatorHandler.warp.selector;
        selectors[26] = ValidatorHandler.warpToEdge.selector;
        // Signing and settling are what the system is for: give them a second ticket each.
        selectors[27] = ValidatorHandler.signVoucher.selector;
        selectors[28] = ValidatorHandler.settle.selector;
        selectors[29] = ValidatorHandler.settleBatch.selector;
        selectors[30] = ValidatorHandler.deposit.selector;
        selectors[31] = ValidatorHandler.register.selector;
        targetSelector(FuzzSelector(address(handler), selectors));
        targetContract(address(handler));
    }

    // Cheap checks: these run after every call of every run, so they call the cheatcode
    // (with its message and values) only when something is wrong.

    function _eq(uint256 a, uint256 b, string memory what) internal pure {
        if (a != b) vm.assertEq(a, b, what);
    }

    function _le(uint256 a, uint256 b, string memory what) internal pure {
        if (a > b) vm.assertLe(a, b, what);
    }

    function _no(bool flag, string memory what) internal pure {
        if (flag) vm.assertFalse(flag, what);
    }

    // Each invariant_ function below is a campaign of its own (256 runs × 64 calls of the
    // handler), so related assertions share one, and each reads the chain state it needs once.

    // ------------------------------------------------------------------ money

    /// Tokens and tabs, DESIGN §2:
    /// - tokens in (deposits) = tokens out (payouts + withdrawals) + the contract's balance,
    ///   and that balance is the sum of all tabs;
    /// - tab isolation: for every (owner, payee), what the payee was seen to receive from the
    ///   tab never exceeds what was deposited to it minus what was withdrawn from it, and the
    ///   tab holds exactly deposits - payouts - withdrawals (so no key of another payee, no
    ///   other owner's key and no owner action but `withdraw` ever lowered it);
    /// - every tab's balance and pending withdrawal are the model's (partial payments and
    ///   withdrawals of min(requested, balance) included).
    function invariant_tabsHoldExactlyWhatFlowedThroughThem() public view {
        address[] memory os = handler.allOwners();
        address[] memory ps = handler.allPayees();
        ValidatorHandler.TabModel[] memory ts = handler.allTabs();
        uint256 sum;
        for (uint256 i; i < os.length; ++i) {
            for (uint256 j; j < ps.length; ++j) {
                ValidatorHandler.TabModel memory t = ts[i * ps.length + j];
                (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(os[i], ps[j]);
                sum += balance;
                _le(t.withdrawn, t.deposited, "withdrew more than was deposited");
                _le(t.paid, t.deposited - t.withdrawn, "payee received more than the tab held");
                _eq(balance, t.deposited - t.paid - t.withdrawn, "tab != deposited - paid - withdrawn");
                _eq(balance, t.balance, "tab != model");
                _eq(withdrawing, t.pending, "pending withdrawal != model");
                _eq(graceEndsAt, t.graceEndsAt, "graceEndsAt != model");
            }
        }
        uint256 held = usdc.balanceOf(address(validator));
        _eq(held, sum, "balance != sum of tabs");
        _eq(
            handler.ghost_deposits(),
            handler.ghost_payouts() + handler.ghost_withdrawals() + held,
            "deposits != payouts + withdrawals + balance"
        );
        _no(handler.ghost_tabActionMismatch(), "a tab action was refused or allowed wrongly");
    }

    // ------------------------------------------------------------------ keys

    /// Keys and payees, DESIGN §2:
    /// - a payee never receives more than the highest voucher a key signed, nor its limit:
    ///   settled <= highestSigned and <= limit for every key;
    /// - settled[key] only grows, and only by what a settlement paid (it is the model's, which
    ///   moves only through booked payments); the broke owner's keys (empty tabs) never move;
    /// - a payee holds exactly the sum of what its keys settled, all of it from its own tabs;
    ///   settlers are never paid;
    /// - the registry never changes but by freeze / unfreeze / revoke as modelled;
    /// - an unregistered key settles nothing: the handler submits valid vouchers of probe
    ///   keys (as their payee) while they are unregistered and registers some of them later;
    ///   each probe is registered iff the handler registered it, and has settled only what
    ///   was paid after its registration.
    function invariant_keysAndPayeesMatchTheModel() public view {
        address[] memory ps = handler.allPayees();
        uint256[] memory sums = new uint256[](ps.length);
        address[] memory ks = handler.allKeys();
        ValidatorHandler.KeyModel[] memory ms = handler.modelsOf(ks);
        for (uint256 i; i < ks.length; ++i) {
            SessionKeyValidator.SessionKey memory s = validator.sessionKeyOf(ks[i]);
            ValidatorHandler.KeyModel memory m = ms[i];
            _eq(s.settled, m.lastSettled, "settled != paid so far");
            _le(s.settled, m.highestSigned, "settled above the highest voucher");
            _le(s.settled, s.limit, "settled above the limit");
            _eq(s.limit, m.limit, "limit changed");
            _eq(uint160(s.payee), uint160(m.payee), "payee changed");
            _eq(uint160(s.owner), uint160(m.owner), "owner changed");
            _eq(s.validAfter, m.validAfter, "validAfter changed");
            _eq(s.validUntil, m.validUntil, "validUntil changed");
            _eq(s.frozenAt, m.frozenAt, "frozenAt != model");
            _eq(s.revokedAt, m.revokedAt, "revokedAt != model");
            for (uint256 j; j < ps.length; ++j) {
                if (s.payee == ps[j]) sums[j] += s.settled;
            }
        }
        address[] memory broke = handler.allBrokeKeys();
        for (uint256 i; i < broke.length; ++i) {
            _eq(validator.sessionKeyOf(broke[i]).settled, 0, "an empty tab paid");
        }
        address[] memory probes = handler.allProbes();
        ValidatorHandler.KeyModel[] memory pm = handler.modelsOf(probes);
        for (uint256 i; i < probes.length; ++i) {
            SessionKeyValidator.SessionKey memory s = validator.sessionKeyOf(probes[i]);
            _eq(uint160(s.owner), uint160(pm[i].owner), "probe registration != model");
            _eq(s.settled, pm[i].lastSettled, "probe settled other than after registration");
        }

        address[] memory os = handler.allOwners();
        ValidatorHandler.TabModel[] memory ts = handler.allTabs();
        (uint256[] memory paidTo,) = handler.payeeModels();
        for (uint256 j; j < ps.length; ++j) {
            uint256 fromTabs;
            for (uint256 i; i < os.length; ++i) {
                fromTabs += ts[i * ps.length + j].paid;
            }
            _eq(usdc.balanceOf(ps[j]), sums[j], "payee balance != sum of settled");
            _eq(paidTo[j], sums[j], "payee model != sum of settled");
            _eq(fromTabs, sums[j], "payee's receipts != what its tabs paid");
        }
        address[] memory ws = handler.allWorkers();
        for (uint256 w; w < ws.length; ++w) {
            _eq(usdc.balanceOf(ws[w]), 0, "a settler was paid");
        }
    }

    // ------------------------------------------------------------ vouchers

    /// Settlement, DESIGN §2, checked on every claim the handler sends:
    /// - each payment is exactly min(voucher - settled, tab): never more than the delta or
    ///   the tab, and a short tab pays what it holds;
    /// - no voucher settles twice, nor on another chain, deployment, key or payee;
    /// - an unregistered key settles nothing;
    /// - frozen, revoked and expired keys settle only within GRACE of when they stopped, and
    ///   nothing settles before validAfter;
    /// - a voucher the model says can pay always settles (nobody can dodge a bill), and every
    ///   refusal carries the error of the rule that refused it.
    function invariant_settlementsFollowTheRules() public view {
        _no(handler.ghost_overpaid(), "a settlement paid more than its delta or its tab");
        _no(handler.ghost_claimMismatch(), "a settlement paid other than min(delta, tab)");
        _no(handler.ghost_payeeMismatch(), "a payee's balance moved by other than the payout");
        _no(handler.ghost_replaySucceeded(), "a voucher settled twice");
        _no(handler.ghost_crossChainSucceeded(), "settled on another chain");
        _no(handler.ghost_crossDeploymentSucceeded(), "settled on another deployment");
        _no(handler.ghost_crossKeySucceeded(), "settled for another key");
        _no(handler.ghost_crossPayeeSucceeded(), "settled for another payee");
        _no(handler.ghost_unregisteredSettled(), "an unregistered key settled");
        _no(handler.ghost_settledOutsideWindow(), "settled after stop + GRACE");
        _no(handler.ghost_settledBeforeValid(), "settled before validAfter");
        _no(handler.ghost_validSettleRefused(), "a valid voucher was refused");
        _no(handler.ghost_wrongRevert(), "refused with the wrong error");
    }

    /// Batch liveness: a batch settles every claim that can pay, whatever the other claims in
    /// it do (replayed, another payee's, unknown, empty tab, bad signature, above the limit,
    /// front-run), each for exactly what it can pay; the others are skipped with their reason;
    /// and a batch from the payee or its settler never reverts.
    function invariant_batchesPayEveryClaimThatCanPay() public view {
        _no(handler.ghost_goodClaimUnpaid(), "a good claim in a batch was not paid");
        _no(handler.ghost_batchReverted(), "a batch reverted");
        _no(handler.ghost_batchMismatch(), "a batch claim's outcome differs from the model");
    }

    /// Only the payee and the settlers it authorised settle: strangers, leaked keys, owners,
    /// other payees and their workers never do (single or batched); authorisations, direct or
    /// relayed, are the model's, and a replayed authorisation is refused.
    function invariant_onlyThePayeeOrItsSettlersSettle() public view {
        _no(handler.ghost_unauthorisedSettled(), "someone else settled");
        _no(handler.ghost_settlerActionMismatch(), "a settler change was refused or replayed");
        address[] memory ps = handler.allPayees();
        address[] memory ws = handler.allWorkers();
        (, bool[] memory settlers) = handler.payeeModels();
        for (uint256 j; j < ps.length; ++j) {
            for (uint256 w; w < ws.length; ++w) {
                bool onChain = validator.isSettler(ps[j], ws[w]);
                if (onChain != settlers[j * ws.length + w]) {
                    vm.assertEq(onChain, settlers[j * ws.length + w], "isSettler != model");
                }
            }
        }
    }

    /// Withdrawals leave only strictly after graceEndsAt and pay min(requested, tab); only the
    /// owner and its guardian can stop a key, only the owner can restart or revoke it, relayed
    /// actions need the owner's fresh signature, guardians are the model's, and nobody can
    /// register a key again.
    function invariant_withdrawalsAndKeyActionsFollowTheRules() public view {
        _no(handler.ghost_withdrewEarly(), "withdrew at or before graceEndsAt");
        _no(handler.ghost_withdrawMismatch(), "withdrawal paid the wrong amount or was refused");
        _no(handler.ghost_unauthorizedKeyAction(), "a key action went through that must not");
        _no(handler.ghost_keyActionMismatch(), "a valid key action was refused");
        _no(handler.ghost_keyOverwritten(), "a registered key was registered again");
        address[] memory os = handler.allOwners();
        for (uint256 i; i + 1 < os.length; ++i) {
            _eq(uint160(validator.guardianOf(os[i])), uint160(handler.model_guardianOf(os[i])), "guardian != model");
        }
    }

    /// Once per run: how much the handler really exercised (shown with `-vv`).
    function afterInvariant() public view {
        console.log("settle calls", handler.calls_settle());
        console.log("settle ok", handler.calls_settleOk());
        console.log("settle partial", handler.calls_settlePartial());
        console.log("settleBatch calls", handler.calls_settleBatch());
        console.log("batch claims paid", handler.calls_batchClaimsPaid());
        console.log("batch claims skipped", handler.calls_batchClaimsSkipped());
        console.log("attacks", handler.calls_attacks());
        console.log("self-payee drains", handler.calls_selfPayeeDrain());
        console.log("withdraw races", handler.calls_withdrawRace());
        console.log("replays (old)", handler.calls_replay());
        console.log("replays (cross)", handler.calls_crossReplay());
        console.log("unregistered", handler.calls_unregistered());
        console.log("key actions", handler.calls_keyActions());
        console.log("key actions with sig", handler.calls_keyActionsWithSig());
        console.log("setSettler", handler.calls_setSettler());
        console.log("withdraw calls", handler.calls_withdraw());
        console.log("withdraw ok", handler.calls_withdrawOk());
        console.log("keys", handler.allKeys().length);
        console.log("warps", handler.calls_warp());
    }
}
