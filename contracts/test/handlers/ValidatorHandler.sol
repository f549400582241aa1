// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SessionKeyValidator} from "../../src/SessionKeyValidator.sol";
import {TestUSDC} from "../../src/TestUSDC.sol";
import {Test, Vm} from "../utils/Test.sol";
import {Digests} from "../utils/Digests.sol";

/// @notice Drives a validator through random sequences of everything its owners, agents,
///         payees, settlers, guardians, relayers and attackers can do, keeping an independent
///         model of what must happen: every tab per (owner, payee), every key, every settler.
/// @dev `fail_on_revert = false`, so a rule broken inside a call is recorded in a `ghost_…`
///      flag that the invariant test asserts; ghost sums and call counters are public.
///      Every claim (single or batched) is predicted by `_expect`, which restates the
///      contract's rules in their order: the payout to the unit (partial payments included)
///      or the exact reason it is refused. Pattern: horsefacts/weth-invariant-testing.
///
///      Actors: three owners, three honest payees (the APIs) and three *sinks*, one per owner:
///      addresses an owner controls and registers self-payee keys for (the adversarial owner
///      of issue 8, finding 1). A fourth owner never funds anything (its keys' claims make
///      empty-tab claims). Each honest payee starts with a settlement worker; a spare worker
///      is authorised and removed along the way.
contract ValidatorHandler is Test {
    string internal constant NAME = "opentab";
    string internal constant VERSION = "1";
    uint256 internal constant MAX_KEYS = 24;
    uint256 internal constant USDC_1 = 1_000_000;
    uint256 internal constant OWNERS = 3;
    uint256 internal constant HONEST_PAYEES = 3;
    uint256 internal constant PROBES = 16;
    uint256 internal constant OWNER_PK_BASE = 0xA000;
    uint256 internal constant PAYEE_PK_BASE = 0xFE00;
    uint256 internal constant SINK_PK_BASE = 0x5100;
    uint256 internal constant KEY_PK_BASE = 0x1000;
    uint256 internal constant BROKE_KEY_PK_BASE = 0x8000;
    uint256 internal constant PROBE_PK_BASE = 0x9000;
    uint256 internal constant GUARDIAN_PK = 0x6A2D;
    uint128 internal constant BROKE_LIMIT = 300_000_000;

    /// @dev The handler's own picture of a key, updated only from what it did.
    struct KeyModel {
        uint256 pk;
        address owner;
        address payee;
        uint128 limit;
        uint48 validAfter;
        uint48 validUntil;
        uint48 frozenAt;
        uint48 revokedAt;
        uint256 highestSigned; // highest voucher the key's holder signed for its payee here
        uint256 lastSettled; // `settled` as the model expects it
    }

    /// @dev One tab. `balance` is what the model expects; `paid` and `withdrawn` are what the
    ///      payee and the owner were actually seen to receive from it.
    struct TabModel {
        uint256 balance;
        uint256 deposited;
        uint256 paid;
        uint256 withdrawn;
        uint256 pending; // requested withdrawal, 0 = none
        uint256 graceEndsAt;
    }

    SessionKeyValidator public immutable validator;
    /// @dev A second deployment with the same name, version, token and keys.
    SessionKeyValidator public immutable twin;
    TestUSDC public immutable usdc;
    uint256 public immutable grace;

    address[] public owners; // funded owners, then the broke one
    address[] public payees; // honest payees, then each owner's sink
    address[] public workers; // one per honest payee, then a spare
    address public immutable guardian;
    address public constant guardian2 = address(0x6A2E);
    address public constant stranger = address(0x5778);
    address public constant brokeOwner = address(0xB20CE);
    mapping(address => uint256) internal _pkOf;

    address[] public keys;
    address[] public brokeKeys; // the broke owner's keys, one per payee
    mapping(address => KeyModel) public model;
    mapping(address => uint256[]) internal _signed; // every amount a key's agent signed, in order
    mapping(address owner => address) public selfKeyOf; // the owner's self-payee key
    address[] public probes; // keys first seen unregistered; some get registered later

    mapping(address => mapping(address => TabModel)) internal _tabs;
    mapping(address payee => mapping(address => bool)) public model_isSettler;
    mapping(address owner => address) public model_guardianOf;
    mapping(address payee => uint256) public ghost_paidTo;

    /// @dev The last `SetSettler` signature relayed for a payee, to replay it.
    struct SettlerSig {
        address settler;
        bool allowed;
        uint256 nonce;
        uint256 deadline;
        bytes sig;
    }

    mapping(address payee => SettlerSig) internal _lastSettlerSig;

    uint256 public ghost_deposits;
    uint256 public ghost_payouts;
    uint256 public ghost_withdrawals;

    // Violations seen inside a call (asserted by the invariant test).
    bool public ghost_replaySucceeded;
    bool public ghost_crossChainSucceeded;
    bool public ghost_crossDeploymentSucceeded;
    bool public ghost_crossKeySucceeded;
    bool public ghost_crossPayeeSucceeded;
    bool public ghost_unregisteredSettled;
    bool public ghost_unauthorisedSettled;
    bool public ghost_settledOutsideWindow;
    bool public ghost_settledBeforeValid;
    bool public ghost_overpaid;
    bool public ghost_claimMismatch;
    bool public ghost_payeeMismatch;
    bool public ghost_validSettleRefused;
    bool public ghost_goodClaimUnpaid;
    bool public ghost_batchMismatch;
    bool public ghost_batchReverted;
    bool public ghost_withdrewEarly;
    bool public ghost_withdrawMismatch;
    bool public ghost_tabActionMismatch;
    bool public ghost_unauthorizedKeyAction;
    bool public ghost_keyActionMismatch;
    bool public ghost_settlerActionMismatch;
    bool public ghost_keyOverwritten;
    bool public ghost_wrongRevert;

    // Call counters.
    uint256 public calls_settle;
    uint256 public calls_settleOk;
    uint256 public calls_settlePartial;
    uint256 public calls_settleBatch;
    uint256 public calls_batchClaimsPaid;
    uint256 public calls_batchClaimsSkipped;
    uint256 public calls_attacks;
    uint256 public calls_selfPayeeDrain;
    uint256 public calls_withdrawRace;
    uint256 public calls_replay;
    uint256 public calls_crossReplay;
    uint256 public calls_unregistered;
    uint256 public calls_register;
    uint256 public calls_keyActions;
    uint256 public calls_keyActionsWithSig;
    uint256 public calls_setSettler;
    uint256 public calls_withdraw;
    uint256 public calls_withdrawOk;
    uint256 public calls_warp;

    constructor(SessionKeyValidator validator_, SessionKeyValidator twin_, TestUSDC usdc_) {
        validator = validator_;
        twin = twin_;
        usdc = usdc_;
        grace = validator_.GRACE();
        guardian = vm.addr(GUARDIAN_PK);
        for (uint256 i; i < OWNERS; ++i) {
            owners.push(vm.addr(OWNER_PK_BASE + i));
            _pkOf[owners[i]] = OWNER_PK_BASE + i;
        }
        owners.push(brokeOwner);
        for (uint256 i; i < HONEST_PAYEES; ++i) {
            payees.push(vm.addr(PAYEE_PK_BASE + i));
            _pkOf[payees[i]] = PAYEE_PK_BASE + i;
        }
        for (uint256 i; i < OWNERS; ++i) {
            address sink = vm.addr(SINK_PK_BASE + i);
            payees.push(sink);
            _pkOf[sink] = SINK_PK_BASE + i;
        }
        for (uint256 i; i <= HONEST_PAYEES; ++i) {
            // forge-lint: disable-next-line(unsafe-typecast)
            workers.push(address(uint160(0x3000 + i)));
        }
        // Every owner lets the rule engine freeze its keys.
        for (uint256 i; i < OWNERS; ++i) {
            vm.prank(owners[i]);
            validator.setGuardian(guardian);
            model_guardianOf[owners[i]] = guardian;
        }
        // Each honest payee authorises its worker: directly, or relayed with its signature.
        for (uint256 i; i < HONEST_PAYEES; ++i) {
            if (i % 2 == 0) {
                vm.prank(payees[i]);
                validator.setSettler(workers[i], true);
            } else {
                uint256 deadline = block.timestamp + 1 hours;
                bytes memory sig = _settlerSig(payees[i], workers[i], true, 0, deadline);
                validator.setSettlerWithSig(payees[i], workers[i], true, 0, deadline, sig);
            }
            model_isSettler[payees[i]][workers[i]] = true;
        }
        // The broke owner holds a live key for every payee and never opens a tab.
        for (uint256 i; i < payees.length; ++i) {
            uint256 pk = BROKE_KEY_PK_BASE + i;
            address k = vm.addr(pk);
            uint48 until = u48(block.timestamp + 1_000 days);
            vm.prank(brokeOwner);
            validator.registerSessionKey(k, payees[i], BROKE_LIMIT, 0, until);
            model[k] = KeyModel(pk, brokeOwner, payees[i], BROKE_LIMIT, 0, until, 0, 0, 0, 0);
            brokeKeys.push(k);
        }
        for (uint256 i; i < PROBES; ++i) {
            probes.push(vm.addr(PROBE_PK_BASE + i));
        }
    }

    // ================================================================ helpers

    function _owner(uint256 seed) internal view returns (address) {
        return owners[bound(seed, 0, OWNERS - 1)];
    }

    function _payee(uint256 seed) internal view returns (address) {
        return payees[bound(seed, 0, payees.length - 1)];
    }

    function _sinkOf(address o) internal view returns (address) {
        for (uint256 i; i < OWNERS; ++i) {
            if (owners[i] == o) return payees[HONEST_PAYEES + i];
        }
        return address(0);
    }

    /// @dev A registered key, or address(0) when there is none yet.
    function _key(uint256 seed) internal view returns (address) {
        if (keys.length == 0) return address(0);
        return keys[bound(seed, 0, keys.length - 1)];
    }

    function _sign(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    function _separator(address at, uint256 chainId) internal pure returns (bytes32) {
        return Digests.domainSeparator(NAME, VERSION, chainId, at);
    }

    function _voucherSig(address at, uint256 pk, address sessionKey, address to, uint256 amount)
        internal
        view
        returns (bytes memory)
    {
        return _sign(pk, Digests.voucher(_separator(at, block.chainid), sessionKey, to, amount));
    }

    function _settlerSig(address p, address settler, bool allowed, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        return _sign(
            _pkOf[p],
            Digests.setSettler(_separator(address(validator), block.chainid), p, settler, allowed, nonce, deadline)
        );
    }

    function _stoppedAt(KeyModel storage m) internal view returns (uint256 s) {
        s = m.validUntil;
        if (m.frozenAt != 0 && m.frozenAt < s) s = m.frozenAt;
        if (m.revokedAt != 0 && m.revokedAt < s) s = m.revokedAt;
    }

    function _inWindow(KeyModel storage m) internal view returns (bool) {
        return block.timestamp >= m.validAfter && block.timestamp <= _stoppedAt(m) + grace;
    }

    /// @dev Who sends `p`'s settlements: the payee itself or one of the settlers it authorised.
    function _settlerFor(address p, uint256 seed) internal view returns (address) {
        address[5] memory pool;
        uint256 n;
        pool[n++] = p;
        for (uint256 i; i < workers.length; ++i) {
            if (model_isSettler[p][workers[i]]) pool[n++] = workers[i];
        }
        return pool[seed % n];
    }

    /// @dev The first four bytes of revert data (zero if shorter).
    function _selectorOf(bytes memory err) internal pure returns (bytes4 selector) {
        if (err.length < 4) return bytes4(0);
        assembly ("memory-safe") {
            selector := mload(add(err, 0x20))
        }
    }

    function _selectorFor(SessionKeyValidator.SkipReason reason) internal pure returns (bytes4) {
        if (reason == SessionKeyValidator.SkipReason.UnknownKey) return SessionKeyValidator.UnknownSessionKey.selector;
        if (reason == SessionKeyValidator.SkipReason.NotYetValid) return SessionKeyValidator.KeyNotYetValid.selector;
        if (reason == SessionKeyValidator.SkipReason.WindowClosed) {
            return SessionKeyValidator.SettlementWindowClosed.selector;
        }
        if (reason == SessionKeyValidator.SkipReason.AboveLimit) return SessionKeyValidator.VoucherAboveLimit.selector;
        if (reason == SessionKeyValidator.SkipReason.NothingToSettle) {
            return SessionKeyValidator.NothingToSettle.selector;
        }
        if (reason == SessionKeyValidator.SkipReason.InvalidSignature) {
            return SessionKeyValidator.InvalidVoucherSignature.selector;
        }
        if (reason == SessionKeyValidator.SkipReason.EmptyTab) return SessionKeyValidator.EmptyTab.selector;
        return bytes4(0);
    }

    // ======================================================= the claim model

    /// @dev What the contract must do with a claim of `k` for `amount`, settled for payee `to`:
    ///      DESIGN §2's rules in the contract's order. `sigOk` says whether the handler signed
    ///      the voucher properly (with `k`'s key, for `to`, here).
    function _expect(address k, address to, uint256 amount, bool sigOk)
        internal
        view
        returns (uint256 paid, SessionKeyValidator.SkipReason reason)
    {
        KeyModel storage m = model[k];
        if (m.owner == address(0)) return (0, SessionKeyValidator.SkipReason.UnknownKey);
        if (m.payee != to) return (0, SessionKeyValidator.SkipReason.WrongPayee);
        if (block.timestamp < m.validAfter) return (0, SessionKeyValidator.SkipReason.NotYetValid);
        if (block.timestamp > _stoppedAt(m) + grace) return (0, SessionKeyValidator.SkipReason.WindowClosed);
        if (amount > m.limit) return (0, SessionKeyValidator.SkipReason.AboveLimit);
        if (amount <= m.lastSettled) return (0, SessionKeyValidator.SkipReason.NothingToSettle);
        if (!sigOk) return (0, SessionKeyValidator.SkipReason.InvalidSignature);
        uint256 tab = _tabs[m.owner][m.payee].balance;
        if (tab == 0) return (0, SessionKeyValidator.SkipReason.EmptyTab);
        paid = amount - m.lastSettled;
        if (paid > tab) paid = tab;
    }

    /// @dev DESIGN §2's rules, checked on a payment that happened (before it is booked).
    function _checkRules(address k, uint256 amount, uint256 paid) internal {
        KeyModel storage m = model[k];
        if (m.owner == address(0)) ghost_unregisteredSettled = true;
        if (block.timestamp < m.validAfter) ghost_settledBeforeValid = true;
        if (block.timestamp > _stoppedAt(m) + grace) ghost_settledOutsideWindow = true;
        if (amount > m.highestSigned || amount > m.limit) ghost_overpaid = true;
        if (amount <= m.lastSettled) ghost_replaySucceeded = true;
        else if (paid > amount - m.lastSettled) ghost_overpaid = true;
        if (paid > _tabs[m.owner][m.payee].balance) ghost_overpaid = true;
        if (paid == 0) ghost_claimMismatch = true; // a claim that pays nothing must be refused
    }

    /// @dev Books `paid`, seen to reach `k`'s payee, against `k`'s tab.
    function _applyPaid(address k, uint256 paid) internal {
        KeyModel storage m = model[k];
        TabModel storage t = _tabs[m.owner][m.payee];
        // Saturating, so that a violation is recorded rather than reverted away.
        t.balance = paid > t.balance ? 0 : t.balance - paid;
        t.paid += paid;
        m.lastSettled += paid;
        ghost_paidTo[m.payee] += paid;
        ghost_payouts += paid;
    }

    /// @dev One `settle` of a registered key by `caller`, checked against `_expect`.
    function _trySettle(address k, uint256 amount, bytes memory sig, bool sigOk, address caller) internal {
        KeyModel storage m = model[k];
        (uint256 expected, SessionKeyValidator.SkipReason reason) = _expect(k, m.payee, amount, sigOk);
        uint256 payeeBefore = usdc.balanceOf(m.payee);
        ++calls_settle;
        vm.prank(caller);
        try validator.settle(k, amount, sig) returns (uint256 paid) {
            ++calls_settleOk;
            if (amount > m.lastSettled && paid < amount - m.lastSettled) ++calls_settlePartial;
            if (reason != SessionKeyValidator.SkipReason.None || paid != expected) ghost_claimMismatch = true;
            uint256 received = usdc.balanceOf(m.payee) - payeeBefore;
            if (received != paid) ghost_payeeMismatch = true;
            _checkRules(k, amount, received);
            _applyPaid(k, received);
        } catch (bytes memory err) {
            if (reason == SessionKeyValidator.SkipReason.None) ghost_validSettleRefused = true;
            else if (_selectorOf(err) != _selectorFor(reason)) ghost_wrongRevert = true;
        }
    }

    /// @dev One `settleBatch` for `p` by `caller`. Each claim's outcome (its `Settled` or
    ///      `ClaimSkipped`, one per claim, in order) is checked against `_expect`, claim after
    ///      claim, so partial payments and a tab running out mid-batch are predicted exactly.
    function _tryBatch(address p, SessionKeyValidator.Claim[] memory claims, bool[] memory sigOk, address caller)
        internal
    {
        uint256 payeeBefore = usdc.balanceOf(p);
        ++calls_settleBatch;
        vm.recordLogs();
        vm.prank(caller);
        try validator.settleBatch(p, claims) returns (uint256 total) {
            Vm.Log[] memory logs = vm.getRecordedLogs();
            uint256 j;
            uint256 sum;
            for (uint256 i; i < logs.length; ++i) {
                if (logs[i].emitter != address(validator)) continue;
                bytes32 topic = logs[i].topics[0];
                if (topic != SessionKeyValidator.Settled.selector && topic != SessionKeyValidator.ClaimSkipped.selector) {
                    continue;
                }
                if (j >= claims.length) {
                    ghost_batchMismatch = true; // more outcomes than claims
                    break;
                }
                sum += _checkOutcome(p, claims[j], sigOk[j], logs[i]);
                ++j;
            }
            if (j != claims.length) ghost_batchMismatch = true; // a claim without an outcome
            if (sum != total || usdc.balanceOf(p) - payeeBefore != total) ghost_payeeMismatch = true;
        } catch {
            vm.getRecordedLogs();
            // Only an empty batch or an unauthorised caller may revert; neither is sent here.
            ghost_batchReverted = true;
        }
    }

    /// @dev Checks one claim's outcome in a batch (its `Settled` or `ClaimSkipped`) against
    ///      `_expect`, and books what it paid.
    function _checkOutcome(address p, SessionKeyValidator.Claim memory c, bool sigOk, Vm.Log memory log)
        internal
        returns (uint256 paid)
    {
        if (address(uint160(uint256(log.topics[1]))) != c.sessionKey) ghost_batchMismatch = true;
        (uint256 expected, SessionKeyValidator.SkipReason reason) = _expect(c.sessionKey, p, c.cumulativeAmount, sigOk);
        if (log.topics[0] == SessionKeyValidator.Settled.selector) {
            uint256 newSettled;
            (paid, newSettled) = abi.decode(log.data, (uint256, uint256));
            if (reason != SessionKeyValidator.SkipReason.None || paid != expected) ghost_batchMismatch = true;
            if (newSettled != model[c.sessionKey].lastSettled + paid) ghost_batchMismatch = true;
            _checkRules(c.sessionKey, c.cumulativeAmount, paid);
            _applyPaid(c.sessionKey, paid);
            ++calls_batchClaimsPaid;
        } else {
            uint8 got = abi.decode(log.data, (uint8));
            if (reason == SessionKeyValidator.SkipReason.None) ghost_goodClaimUnpaid = true;
            else if (got != uint8(reason)) ghost_batchMismatch = true;
            ++calls_batchClaimsSkipped;
        }
    }

    // ================================================================== tabs

    function _deposit(address o, address p, uint256 amount) internal {
        usdc.mint(o, amount);
        vm.startPrank(o);
        usdc.approve(address(validator), amount);
        validator.deposit(p, amount);
        vm.stopPrank();
        TabModel storage t = _tabs[o][p];
        t.balance += amount;
        t.deposited += amount;
        ghost_deposits += amount;
    }

    /// @dev Replays and attacks are only meaningful against a tab that could pay.
    function _ensureFunded(address o, address p) internal {
        if (o != brokeOwner && _tabs[o][p].balance == 0) _deposit(o, p, USDC_1);
    }

    /// Deposits to any of the owner's tabs: mostly the honest payees', sometimes a sink's.
    function deposit(uint256 ownerSeed, uint256 payeeSeed, uint256 amount) external {
        address p = (payeeSeed >> 128) % 4 == 0 ? _payee(payeeSeed) : payees[bound(payeeSeed, 0, HONEST_PAYEES - 1)];
        _deposit(_owner(ownerSeed), p, bound(amount, 1, 500 * USDC_1));
    }

    function _request(address o, address p, uint256 amount) internal {
        TabModel storage t = _tabs[o][p];
        bool ok = amount != 0 && amount <= t.balance;
        vm.prank(o);
        try validator.requestWithdrawal(p, amount) {
            if (!ok) ghost_tabActionMismatch = true;
            t.pending = amount;
            t.graceEndsAt = block.timestamp + grace;
        } catch (bytes memory err) {
            if (ok) ghost_tabActionMismatch = true;
            else if (amount != 0 && _selectorOf(err) != SessionKeyValidator.InsufficientTab.selector) ghost_wrongRevert = true;
        }
    }

    /// Asks to withdraw from a tab; one time in four more than it holds (refused).
    function requestWithdrawal(uint256 ownerSeed, uint256 payeeSeed, uint256 amount) external {
        address o = _owner(ownerSeed);
        address p = _payee(payeeSeed);
        uint256 balance = _tabs[o][p].balance;
        _request(o, p, amount % 4 == 0 ? balance + bound(amount, 1, 100) : bound(amount, 1, balance + 1));
    }

    function cancelWithdrawal(uint256 ownerSeed, uint256 payeeSeed) external {
        address o = _owner(ownerSeed);
        address p = _payee(payeeSeed);
        TabModel storage t = _tabs[o][p];
        vm.prank(o);
        try validator.cancelWithdrawal(p) {
            if (t.pending == 0) ghost_tabActionMismatch = true;
            (t.pending, t.graceEndsAt) = (0, 0);
        } catch (bytes memory err) {
            if (t.pending != 0) ghost_tabActionMismatch = true;
            else if (_selectorOf(err) != SessionKeyValidator.NoPendingWithdrawal.selector) ghost_wrongRevert = true;
        }
    }

    /// @dev `withdraw` pays min(pending, balance) strictly after graceEndsAt, else is refused.
    function _tryWithdraw(address o, address p) internal {
        TabModel storage t = _tabs[o][p];
        bool ready = t.pending != 0 && block.timestamp > t.graceEndsAt;
        uint256 expected = t.pending < t.balance ? t.pending : t.balance;
        uint256 before = usdc.balanceOf(o);
        ++calls_withdraw;
        vm.prank(o);
        try validator.withdraw(p) returns (uint256 out) {
            ++calls_withdrawOk;
            if (!ready) ghost_withdrewEarly = true;
            uint256 received = usdc.balanceOf(o) - before;
            if (out != expected || received != out) ghost_withdrawMismatch = true;
            t.balance = received > t.balance ? 0 : t.balance - received;
            t.withdrawn += received;
            ghost_withdrawals += received;
            (t.pending, t.graceEndsAt) = (0, 0);
        } catch (bytes memory err) {
            if (ready) ghost_withdrawMismatch = true;
            bytes4 want = t.pending == 0
                ? SessionKeyValidator.NoPendingWithdrawal.selector
                : SessionKeyValidator.WithdrawalNotReady.selector;
            if (_selectorOf(err) != want) ghost_wrongRevert = true;
        }
    }

    /// Withdraws; often asks first, and sometimes comes back at exactly graceEndsAt (refused)
    /// or the second after (paid).
    function withdraw(uint256 ownerSeed, uint256 payeeSeed, uint256 seed) external {
        address o = _owner(ownerSeed);
        address p = _payee(payeeSeed);
        TabModel storage t = _tabs[o][p];
        if (t.pending == 0 && seed % 2 == 0 && t.balance != 0) _request(o, p, bound(seed >> 10, 1, t.balance));
        uint256 w = (seed >> 8) % 4;
        if (t.pending != 0 && w < 2 && block.timestamp < t.graceEndsAt + w) {
            vm.warp(t.graceEndsAt + w);
            ++calls_warp;
        }
        _tryWithdraw(o, p);
    }

    /// The adversarial owner races the payee: it freezes a key and asks for its whole tab in
    /// the same second, comes back at the last second of grace (when the payee settles what
    /// it served), then one second later (when only the withdrawal may go through).
    function withdrawRace(uint256 ownerSeed, uint256 payeeSeed, uint256 seed) external {
        address o = _owner(ownerSeed);
        address p = _payee(payeeSeed);
        ++calls_withdrawRace;
        if (_tabs[o][p].balance == 0) _deposit(o, p, bound(seed, 1, 100 * USDC_1));
        // A key of the owner's with this payee that can still be frozen.
        address k;
        uint256 n = keys.length;
        for (uint256 j; j < n; ++j) {
            address c = keys[(seed % n + j) % n];
            KeyModel storage m = model[c];
            if (m.owner == o && m.payee == p && m.frozenAt == 0 && m.revokedAt == 0) {
                k = c;
                break;
            }
        }
        if (k != address(0)) {
            vm.prank(o);
            try validator.freeze(k) {
                model[k].frozenAt = u48(block.timestamp);
            } catch {
                ghost_keyActionMismatch = true;
            }
            if (_bestVoucher(k) <= model[k].lastSettled) _signNext(k, seed >> 16);
        }
        _request(o, p, _tabs[o][p].balance);
        uint256 end = _tabs[o][p].graceEndsAt;
        if (end <= block.timestamp) return; // the request was refused (and recorded as such)
        vm.warp(end);
        ++calls_warp;
        _tryWithdraw(o, p); // refused: the second is the payee's
        if (k != address(0)) _settleBest(k, seed >> 24);
        vm.warp(end + 1);
        if (k != address(0)) {
            _signNext(k, seed >> 32);
            _settleBest(k, seed >> 40); // the window has closed (unless another stop is later)
        }
        _tryWithdraw(o, p); // paid: the payee had its window
    }

    // ========================================================== registration

    /// @dev What a registration asks for.
    struct Terms {
        address payee;
        uint128 limit;
        uint48 validAfter;
        uint48 validUntil;
    }

    /// @dev Registers vm.addr(`pk`) for `o` (every registration the handler makes is valid), here
    ///      and at the twin deployment, where it also gets a tab.
    function _register(address o, uint256 pk, Terms memory t, bool withSig) internal {
        address k = vm.addr(pk);
        ++calls_register;
        bool ok = withSig ? _registerWithSig(o, k, t) : _registerDirectly(o, k, t);
        if (!ok) {
            ghost_keyActionMismatch = true;
            return;
        }
        uint256 twinFunds = t.limit < 1_000 * USDC_1 ? t.limit : 1_000 * USDC_1;
        usdc.mint(o, twinFunds);
        vm.startPrank(o);
        usdc.approve(address(twin), twinFunds);
        twin.deposit(t.payee, twinFunds);
        twin.registerSessionKey(k, t.payee, t.limit, t.validAfter, t.validUntil);
        vm.stopPrank();

        keys.push(k);
        model[k] = KeyModel(pk, o, t.payee, t.limit, t.validAfter, t.validUntil, 0, 0, 0, 0);
    }

    function _registerDirectly(address o, address k, Terms memory t) internal returns (bool) {
        vm.prank(o);
        try validator.registerSessionKey(k, t.payee, t.limit, t.validAfter, t.validUntil) {
            return true;
        } catch {
            return false;
        }
    }

    /// @dev The UI's path: the owner signs, a relayer submits.
    function _registerWithSig(address o, address k, Terms memory t) internal returns (bool) {
        uint256 nonce = validator.nonces(o);
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 digest = Digests.registration(
            _separator(address(validator), block.chainid),
            o,
            k,
            t.payee,
            t.limit,
            t.validAfter,
            t.validUntil,
            nonce,
            deadline
        );
        bytes memory sig = _sign(_pkOf[o], digest);
        vm.prank(address(uint160(uint256(digest)))); // any relayer
        try validator.registerSessionKeyWithSig(
            k, t.payee, t.limit, t.validAfter, t.validUntil, o, nonce, deadline, sig
        ) {
            return true;
        } catch {
            return false;
        }
    }

    /// @dev Terms for `to` and `limit`: a quarter of the keys start in the future; the rest
    ///      started up to 30 minutes ago; they last an hour to ten days.
    function _terms(address to, uint128 limit, uint256 startOffset, uint256 duration)
        internal
        view
        returns (Terms memory t)
    {
        t.payee = to;
        t.limit = limit;
        t.validAfter = startOffset % 4 == 0
            ? u48(block.timestamp + bound(startOffset, 1, 6 hours))
            : u48(block.timestamp - bound(startOffset, 0, 30 minutes));
        t.validUntil = u48(block.timestamp + bound(duration, 1 hours, 10 days));
        if (t.validUntil <= t.validAfter) t.validUntil = t.validAfter + 1 hours;
    }

    /// Registers a key for an honest payee (directly or relayed with the owner's signature);
    /// one time in eight a self-payee key paying the owner's own sink, without limit.
    function register(uint256 ownerSeed, uint256 payeeSeed, uint256 limit, uint256 startOffset, uint256 duration)
        external
    {
        if (keys.length >= MAX_KEYS) return;
        address o = _owner(ownerSeed);
        bool self = payeeSeed % 8 == 0;
        Terms memory t = self
            ? _terms(_sinkOf(o), type(uint128).max, startOffset, duration)
            : _terms(payees[bound(payeeSeed, 0, HONEST_PAYEES - 1)], uint128(bound(limit, 1, 300 * USDC_1)), startOffset, duration);
        uint256 pk = KEY_PK_BASE + keys.length;
        _register(o, pk, t, duration % 2 == 1);
        if (self && selfKeyOf[o] == address(0)) selfKeyOf[o] = vm.addr(pk);
    }

    /// A key that was probed while unregistered gets registered after all.
    function registerProbed(uint256 probeSeed, uint256 ownerSeed, uint256 payeeSeed, uint256 limit) external {
        if (keys.length >= MAX_KEYS) return;
        uint256 i = bound(probeSeed, 0, PROBES - 1);
        if (model[probes[i]].owner != address(0)) return;
        Terms memory t = _terms(
            payees[bound(payeeSeed, 0, HONEST_PAYEES - 1)], uint128(bound(limit, 1, 300 * USDC_1)), limit >> 8, limit >> 16
        );
        _register(_owner(ownerSeed), PROBE_PK_BASE + i, t, payeeSeed % 2 == 1);
    }

    // ============================================================== vouchers

    /// The agent serves more calls and signs a higher voucher; one time in eight a runaway
    /// agent signs past its limit.
    function signVoucher(uint256 keySeed, uint256 delta) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        _signNext(k, delta);
    }

    function _signNext(address k, uint256 delta) internal {
        KeyModel storage m = model[k];
        uint256 cap = m.limit > 400 * USDC_1 ? 400 * USDC_1 : m.limit; // self-payee keys have no limit
        uint256 next;
        if (delta % 8 == 0 && m.limit < type(uint128).max) {
            next = uint256(m.limit) + bound(delta >> 3, 1, m.limit / 4 + 1);
        } else {
            uint256 best = _bestVoucher(k);
            next = best + bound(delta, 1, cap / 4 + 1);
            if (next > m.limit) next = m.limit;
            if (next <= best) return; // already at the limit
        }
        if (next > m.highestSigned) m.highestSigned = next;
        _signed[k].push(next);
    }

    /// @dev The highest voucher of `k` within its limit (what a gateway would hold), or 0.
    function _bestVoucher(address k) internal view returns (uint256 amount) {
        uint256[] storage signed = _signed[k];
        uint128 limit = model[k].limit;
        for (uint256 i; i < signed.length; ++i) {
            uint256 a = signed[i];
            if (a <= limit && a > amount) amount = a;
        }
    }

    /// @dev The payee's side settles `k`'s best voucher.
    function _settleBest(address k, uint256 seed) internal {
        uint256 amount = _bestVoucher(k);
        if (amount == 0) return;
        KeyModel storage m = model[k];
        bytes memory sig = _voucherSig(address(validator), m.pk, k, m.payee, amount);
        _trySettle(k, amount, sig, true, _settlerFor(m.payee, seed));
    }

    /// Settles the key's best voucher (or, one time in eight, any voucher it signed), sent by
    /// the payee or one of its settlers. When the best one is settled already, the agent
    /// usually signs a new one first.
    function settle(uint256 keySeed, uint256 voucherSeed, uint256 callerSeed) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        // Mostly a key a gateway would still be settling; sometimes whatever key came up.
        if ((voucherSeed >> 4) % 4 != 0) k = _liveKeyFrom(keySeed);
        _settle(k, voucherSeed, callerSeed);
    }

    /// @dev The first key from `seed` on whose settlement window is open, else the seed's key.
    function _liveKeyFrom(uint256 seed) internal view returns (address) {
        uint256 n = keys.length;
        uint256 start = bound(seed, 0, n - 1);
        for (uint256 j; j < n; ++j) {
            address k = keys[(start + j) % n];
            if (_inWindow(model[k])) return k;
        }
        return keys[start];
    }

    function _settle(address k, uint256 voucherSeed, uint256 callerSeed) internal {
        if (voucherSeed % 8 != 0 && _bestVoucher(k) <= model[k].lastSettled) _signNext(k, callerSeed >> 8);
        if (_signed[k].length == 0) return;
        KeyModel storage m = model[k];
        uint256[] storage signed = _signed[k];
        uint256 amount = voucherSeed % 8 == 0 ? signed[bound(voucherSeed, 0, signed.length - 1)] : _bestVoucher(k);
        if (amount == 0) amount = signed[0];
        bytes memory sig = _voucherSig(address(validator), m.pk, k, m.payee, amount);
        _trySettle(k, amount, sig, true, _settlerFor(m.payee, callerSeed));
    }

    /// @dev A claim of `k`'s best voucher (signing a new one if needed), or an empty claim.
    function _goodClaim(address k, uint256 seed) internal returns (SessionKeyValidator.Claim memory c) {
        if (_bestVoucher(k) <= model[k].lastSettled) _signNext(k, seed);
        uint256 amount = _bestVoucher(k);
        if (amount == 0) return c;
        KeyModel storage m = model[k];
        c = SessionKeyValidator.Claim(k, amount, _voucherSig(address(validator), m.pk, k, m.payee, amount));
    }

    /// Settles up to three keys of one payee in one batch, with one bad claim among them:
    /// a replay of a claim in the batch, a key of another payee, an unknown key, a key whose
    /// owner has no tab, a bad signature, a voucher above the limit, or a claim the payee
    /// settled on its own first (the race of finding 2). Every good claim must still be paid.
    function settleBatch(uint256 payeeSeed, uint256 seedA, uint256 badSeed, uint256 callerSeed) external {
        // Mostly the payee of a key still being settled; sometimes any payee.
        address p = payeeSeed % 4 != 0 && keys.length != 0
            ? model[_liveKeyFrom(payeeSeed >> 8)].payee
            : _payee(payeeSeed);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](5);
        bool[] memory sigOk = new bool[](5);
        uint256 n;
        uint256 found;
        for (uint256 j; j < keys.length && found < 3; ++j) {
            address k = keys[(seedA % keys.length + j) % keys.length];
            // Mostly keys in their window; now and then one that is not.
            if (model[k].payee != p || (!_inWindow(model[k]) && (seedA >> (j % 64)) & 1 == 0)) continue;
            ++found;
            SessionKeyValidator.Claim memory c = _goodClaim(k, seedA >> 8);
            if (c.sessionKey == address(0)) continue;
            (claims[n], sigOk[n]) = (c, true);
            ++n;
        }
        (SessionKeyValidator.Claim memory bad, bool badSigOk) = _badClaim(p, badSeed, claims, n);
        if (bad.sessionKey != address(0)) {
            // Anywhere in the batch, keeping a replayed duplicate after its original.
            uint256 at = badSeed % 8 == 0 ? n : bound(badSeed >> 8, 0, n);
            for (uint256 j = n; j > at; --j) {
                (claims[j], sigOk[j]) = (claims[j - 1], sigOk[j - 1]);
            }
            (claims[at], sigOk[at]) = (bad, badSigOk);
            ++n;
        }
        if (n == 0) return;
        assembly ("memory-safe") {
            mstore(claims, n)
            mstore(sigOk, n)
        }
        _tryBatch(p, claims, sigOk, _settlerFor(p, callerSeed));
    }

    /// @dev One claim that cannot pay (as the model will confirm), of a kind picked by `seed`.
    function _badClaim(address p, uint256 seed, SessionKeyValidator.Claim[] memory claims, uint256 n)
        internal
        returns (SessionKeyValidator.Claim memory c, bool sigOk)
    {
        uint256 kind = seed % 8;
        sigOk = true;
        if (kind == 0) {
            // A replay: a duplicate of a claim already in the batch.
            if (n != 0) c = claims[bound(seed >> 16, 0, n - 1)];
        } else if (kind == 1) {
            c = _claimOfAnotherPayee(p, seed >> 16);
        } else if (kind == 2) {
            // A key never registered here (a probe, if it still is one).
            uint256 i = bound(seed >> 16, 0, PROBES - 1);
            address k = probes[i];
            if (model[k].owner == address(0)) {
                c = SessionKeyValidator.Claim(k, USDC_1, _voucherSig(address(validator), PROBE_PK_BASE + i, k, p, USDC_1));
            }
        } else if (kind == 3) {
            // The broke owner's key for this payee: an empty tab.
            address k = brokeKeys[_indexOfPayee(p)];
            uint256 amount = bound(seed >> 16, 1, 300 * USDC_1);
            c = SessionKeyValidator.Claim(k, amount, _voucherSig(address(validator), model[k].pk, k, p, amount));
        } else {
            address k = _keyOfPayee(p, seed >> 16);
            if (k == address(0)) return (c, sigOk);
            _ensureFunded(model[k].owner, p);
            (c, sigOk) = _badClaimOf(k, kind, seed >> 24);
        }
    }

    /// @dev A key of another payee than `p`, with a voucher good for that payee.
    function _claimOfAnotherPayee(address p, uint256 seed) internal view returns (SessionKeyValidator.Claim memory c) {
        uint256 len = keys.length;
        for (uint256 j; j < len; ++j) {
            address k = keys[(j + seed) % len];
            KeyModel storage m = model[k];
            if (m.payee != p && _signed[k].length != 0) {
                uint256 amount = _signed[k][_signed[k].length - 1];
                return SessionKeyValidator.Claim(k, amount, _voucherSig(address(validator), m.pk, k, m.payee, amount));
            }
        }
    }

    /// @dev A bad claim of `k` (whose tab is funded): a signature by another key (kind 4), a
    ///      voucher above the limit (5), one the payee settled on its own just before (6, the
    ///      front-run of finding 2), or a signature for another chain (7).
    function _badClaimOf(address k, uint256 kind, uint256 seed)
        internal
        returns (SessionKeyValidator.Claim memory c, bool sigOk)
    {
        KeyModel storage m = model[k];
        sigOk = true;
        uint256 amount = m.lastSettled + 1;
        if (kind == 4) {
            c = SessionKeyValidator.Claim(k, amount, _voucherSig(address(validator), m.pk + 1, k, m.payee, amount));
            sigOk = false;
        } else if (kind == 5 && m.limit < type(uint128).max) {
            amount = uint256(m.limit) + 1 + (seed >> 200);
            c = SessionKeyValidator.Claim(k, amount, _voucherSig(address(validator), m.pk, k, m.payee, amount));
        } else if (kind == 7) {
            bytes32 digest = Digests.voucher(_separator(address(validator), block.chainid + 1), k, m.payee, amount);
            c = SessionKeyValidator.Claim(k, amount, _sign(m.pk, digest));
            sigOk = false;
        } else {
            c = _goodClaim(k, seed);
            if (c.sessionKey != address(0)) _trySettle(k, c.cumulativeAmount, c.signature, true, m.payee);
        }
    }

    function _indexOfPayee(address p) internal view returns (uint256 i) {
        while (payees[i] != p) ++i;
    }

    /// @dev A registered key paying `p`, from `seed` on, or address(0).
    function _keyOfPayee(address p, uint256 seed) internal view returns (address) {
        uint256 n = keys.length;
        for (uint256 j; j < n; ++j) {
            address k = keys[(seed % n + j) % n];
            if (model[k].payee == p) return k;
        }
        return address(0);
    }

    // =============================================================== attacks

    /// Someone other than the payee and its settlers pushes a voucher on-chain: a stranger,
    /// the (leaked) session key itself, its owner, another payee, a worker of another payee.
    /// The voucher is one the leaked key signs for anything up to its limit. Always refused
    /// with NotSettler; routed through a batch of a payee the caller controls, it is skipped.
    function attackerSettle(uint256 keySeed, uint256 callerSeed, uint256 amountSeed) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        _ensureFunded(m.owner, m.payee);
        uint256 amount = bound(amountSeed, m.lastSettled < m.limit ? m.lastSettled + 1 : 1, m.limit);
        bytes memory sig = _voucherSig(address(validator), m.pk, k, m.payee, amount);
        address[6] memory pool =
            [stranger, k, m.owner, payees[bound(callerSeed >> 8, 0, payees.length - 1)], workers[callerSeed % 4], _sinkOf(m.owner)];
        address caller = pool[callerSeed % 6];
        if (caller == address(0) || caller == m.payee || model_isSettler[m.payee][caller]) caller = stranger;
        ++calls_attacks;
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = SessionKeyValidator.Claim(k, amount, sig);
        uint256 mode = (callerSeed >> 16) % 3;
        if (mode == 2 && _isPayee(caller)) {
            // A payee settles another payee's key through its own batch: skipped, WrongPayee.
            bool[] memory ok = new bool[](1);
            ok[0] = true;
            _tryBatch(caller, claims, ok, caller);
            return;
        }
        bytes memory want = abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, m.payee, caller);
        vm.prank(caller);
        if (mode == 1) {
            try validator.settleBatch(m.payee, claims) {
                ghost_unauthorisedSettled = true;
            } catch (bytes memory err) {
                if (keccak256(err) != keccak256(want)) ghost_wrongRevert = true;
            }
        } else {
            try validator.settle(k, amount, sig) {
                ghost_unauthorisedSettled = true;
            } catch (bytes memory err) {
                if (keccak256(err) != keccak256(want)) ghost_wrongRevert = true;
            }
        }
    }

    function _isPayee(address a) internal view returns (bool) {
        for (uint256 i; i < payees.length; ++i) {
            if (payees[i] == a) return true;
        }
        return false;
    }

    /// Finding 1's adversarial owner: its self-payee key signs a voucher for everything the
    /// owner holds in all its tabs, and the owner's sink settles it at once. It may only ever
    /// draw on the owner's tab with the sink (which the owner sometimes funds).
    function selfPayeeDrain(uint256 ownerSeed, uint256 amountSeed, uint256 fund) external {
        address o = _owner(ownerSeed);
        address k = _selfKey(o, fund % 2 == 1);
        if (k == address(0)) return;
        if (fund % 3 == 0) _deposit(o, model[k].payee, bound(fund >> 8, 1, 50 * USDC_1));
        ++calls_selfPayeeDrain;
        uint256 everything;
        for (uint256 i; i < payees.length; ++i) {
            everything += _tabs[o][payees[i]].balance;
        }
        _drain(k, model[k].lastSettled + bound(amountSeed, 1, everything + 1), amountSeed >> 128);
    }

    /// @dev The owner signs `amount` with its self-payee key `k`; its sink settles it.
    function _drain(address k, uint256 amount, uint256 callerSeed) internal {
        KeyModel storage m = model[k];
        if (amount > m.highestSigned) m.highestSigned = amount;
        _signed[k].push(amount);
        bytes memory sig = _voucherSig(address(validator), m.pk, k, m.payee, amount);
        _trySettle(k, amount, sig, true, _settlerFor(m.payee, callerSeed));
    }

    /// @dev The owner's self-payee key (paying its sink, without limit), registered if need be.
    function _selfKey(address o, bool withSig) internal returns (address k) {
        k = selfKeyOf[o];
        if (k != address(0) || keys.length >= MAX_KEYS) return k;
        uint256 pk = KEY_PK_BASE + keys.length;
        k = vm.addr(pk);
        uint48 from = u48(block.timestamp);
        _register(o, pk, Terms(_sinkOf(o), type(uint128).max, from, from + 30 days), withSig);
        selfKeyOf[o] = k;
    }

    // ========================================================= replay attacks

    /// Resubmits (as the payee) a voucher the key signed that is not above what was settled.
    function replayOldVoucher(uint256 keySeed, uint256 idx) external {
        address k = _key(keySeed);
        if (k == address(0) || _signed[k].length == 0) return;
        KeyModel storage m = model[k];
        uint256 amount = _signed[k][bound(idx, 0, _signed[k].length - 1)];
        // Not settled yet is not a replay: then the settled total itself is replayed.
        if (amount > m.lastSettled) amount = m.lastSettled;
        if (amount == 0) return;
        _ensureFunded(m.owner, m.payee);
        ++calls_replay;
        bytes memory sig = _voucherSig(address(validator), m.pk, k, m.payee, amount);
        vm.prank(m.payee);
        try validator.settle(k, amount, sig) {
            ghost_replaySucceeded = true;
        } catch {}
    }

    /// Submits key A's next voucher as key B's.
    function replayCrossKey(uint256 seedA, uint256 seedB) external {
        address a = _key(seedA);
        address b = _key(seedB);
        if (a == address(0) || a == b) return;
        KeyModel memory ma = model[a];
        KeyModel memory mb = model[b];
        _ensureFunded(mb.owner, mb.payee);
        uint256 amount = mb.lastSettled + 1;
        ++calls_crossReplay;
        // Signed by A over B's terms, and A's own voucher presented for B.
        bytes memory overB = _voucherSig(address(validator), ma.pk, b, mb.payee, amount);
        bytes memory own = _voucherSig(address(validator), ma.pk, a, ma.payee, amount);
        vm.prank(mb.payee);
        try validator.settle(b, amount, overB) {
            ghost_crossKeySucceeded = true;
        } catch {}
        vm.prank(mb.payee);
        try validator.settle(b, amount, own) {
            ghost_crossKeySucceeded = true;
        } catch {}
    }

    /// The key signs a voucher naming a payee it was not registered for; that payee (or the
    /// key's own) submits it.
    function replayCrossPayee(uint256 keySeed, uint256 payeeSeed, uint256 delta) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        _ensureFunded(m.owner, m.payee);
        address other = _payee(payeeSeed);
        if (other == m.payee) other = address(uint160(other) + 0x100);
        uint256 amount = m.lastSettled + bound(delta, 1, m.limit > 1e15 ? 1e15 : m.limit);
        ++calls_crossReplay;
        bytes memory sig = _voucherSig(address(validator), m.pk, k, other, amount);
        vm.prank(delta % 2 == 0 ? m.payee : other);
        try validator.settle(k, amount, sig) {
            ghost_crossPayeeSucceeded = true;
        } catch {}
    }

    /// A voucher that would settle here, submitted on another chain id.
    function replayCrossChain(uint256 keySeed, uint256 chainId) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        uint256 home = block.chainid;
        chainId = bound(chainId, 1, type(uint64).max);
        if (chainId == home) chainId = home + 1;
        KeyModel storage m = model[k];
        _ensureFunded(m.owner, m.payee);
        uint256 amount = m.lastSettled + 1;
        bytes memory sig = _voucherSig(address(validator), m.pk, k, m.payee, amount);
        ++calls_crossReplay;
        vm.chainId(chainId);
        vm.prank(m.payee);
        try validator.settle(k, amount, sig) {
            ghost_crossChainSucceeded = true;
        } catch {}
        vm.chainId(home);
    }

    /// Vouchers for the twin deployment submitted here, and this one's at the twin.
    function replayCrossDeployment(uint256 keySeed) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        _ensureFunded(m.owner, m.payee);
        uint256 amount = m.lastSettled + 1;
        uint256 twinAmount = twin.sessionKeyOf(k).settled + 1;
        ++calls_crossReplay;
        bytes memory forTwin = _voucherSig(address(twin), m.pk, k, m.payee, amount);
        bytes memory forHere = _voucherSig(address(validator), m.pk, k, m.payee, twinAmount);
        vm.prank(m.payee);
        try validator.settle(k, amount, forTwin) {
            ghost_crossDeploymentSucceeded = true;
        } catch {}
        vm.prank(m.payee);
        try twin.settle(k, twinAmount, forHere) {
            ghost_crossDeploymentSucceeded = true;
        } catch {}
    }

    /// Another owner tries to take over a registered key, pointing it at its own sink.
    function hijackKey(uint256 keySeed, uint256 ownerSeed) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        address o = _owner(ownerSeed);
        ++calls_crossReplay;
        vm.prank(o);
        try validator.registerSessionKey(k, _sinkOf(o), type(uint128).max, 0, u48(block.timestamp + 1 days)) {
            ghost_keyOverwritten = true;
        } catch (bytes memory err) {
            if (_selectorOf(err) != SessionKeyValidator.SessionKeyExists.selector) ghost_wrongRevert = true;
        }
    }

    /// A key not registered here signs a voucher and the payee itself submits it.
    function settleUnregistered(uint256 probeSeed, uint256 payeeSeed, uint256 amount) external {
        uint256 i = bound(probeSeed, 0, PROBES - 1);
        address k = probes[i];
        if (model[k].owner != address(0)) return; // registered since: no longer a probe
        address to = _payee(payeeSeed);
        amount = bound(amount, 1, 300 * USDC_1);
        ++calls_unregistered;
        bytes memory sig = _voucherSig(address(validator), PROBE_PK_BASE + i, k, to, amount);
        vm.prank(to);
        try validator.settle(k, amount, sig) {
            ghost_unregisteredSettled = true;
        } catch (bytes memory err) {
            if (_selectorOf(err) != SessionKeyValidator.UnknownSessionKey.selector) ghost_wrongRevert = true;
        }
    }

    // ===================================================== freeze and revoke

    function _checkKeyAction(bool expected, bool happened) internal {
        if (happened && !expected) ghost_unauthorizedKeyAction = true;
        if (!happened && expected) ghost_keyActionMismatch = true;
    }

    /// Freezes as the owner, its guardian, a guardian it removed or never had, or a stranger.
    function freeze(uint256 keySeed, uint256 who) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        address[4] memory pool = [m.owner, guardian, guardian2, stranger];
        address caller = pool[who % 4];
        bool ok = (caller == m.owner || caller == model_guardianOf[m.owner]) && m.revokedAt == 0 && m.frozenAt == 0;
        ++calls_keyActions;
        vm.prank(caller);
        try validator.freeze(k) {
            _checkKeyAction(ok, true);
            m.frozenAt = u48(block.timestamp);
        } catch {
            _checkKeyAction(ok, false);
        }
    }

    /// Unfreezes as the owner, or as its guardian or a stranger (who never may).
    function unfreeze(uint256 keySeed, uint256 who) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        address[3] memory pool = [m.owner, model_guardianOf[m.owner], stranger];
        address caller = pool[who % 3];
        if (caller == address(0)) caller = guardian;
        bool ok = caller == m.owner && m.revokedAt == 0 && m.frozenAt != 0;
        ++calls_keyActions;
        vm.prank(caller);
        try validator.unfreeze(k) {
            _checkKeyAction(ok, true);
            m.frozenAt = 0;
        } catch {
            _checkKeyAction(ok, false);
        }
    }

    /// Revokes as the owner, or as its guardian (who never may).
    function revoke(uint256 keySeed, uint256 who) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        address caller = who % 4 == 0 ? guardian : m.owner;
        bool ok = caller == m.owner && m.revokedAt == 0;
        ++calls_keyActions;
        vm.prank(caller);
        try validator.revoke(k) {
            _checkKeyAction(ok, true);
            m.revokedAt = u48(block.timestamp);
        } catch {
            _checkKeyAction(ok, false);
        }
    }

    /// A relayed freeze, unfreeze or revoke, with the owner's signature; one time in two it
    /// is tampered with: a used or future nonce, an expired deadline, or the guardian's key.
    function keyActionWithSig(uint256 keySeed, uint256 action, uint256 tamper) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        action %= 3;
        bytes32 typehash = action == 0
            ? Digests.FREEZE_TYPEHASH
            : action == 1 ? Digests.UNFREEZE_TYPEHASH : Digests.REVOKE_TYPEHASH;
        uint256 nonce = validator.nonces(m.owner);
        uint256 deadline = block.timestamp + bound(tamper >> 8, 0, 1 days);
        uint256 pk = _pkOf[m.owner];
        uint256 t = tamper % 8;
        if (t == 1) nonce += 1;
        else if (t == 2 && nonce != 0) nonce -= 1;
        else if (t == 3) deadline = block.timestamp - 1;
        else if (t == 4) pk = GUARDIAN_PK;
        bool sigOk = t == 0 || t > 4 || (t == 2 && nonce == validator.nonces(m.owner));
        bool stateOk = m.revokedAt == 0 && (action == 0 ? m.frozenAt == 0 : action == 1 ? m.frozenAt != 0 : true);
        bytes memory sig =
            _sign(pk, Digests.keyAction(_separator(address(validator), block.chainid), typehash, k, nonce, deadline));
        ++calls_keyActionsWithSig;
        vm.prank(address(uint160(uint256(keccak256(sig))))); // any relayer
        bool happened = true;
        if (action == 0) {
            try validator.freezeWithSig(k, nonce, deadline, sig) {} catch { happened = false; }
        } else if (action == 1) {
            try validator.unfreezeWithSig(k, nonce, deadline, sig) {} catch { happened = false; }
        } else {
            try validator.revokeWithSig(k, nonce, deadline, sig) {} catch { happened = false; }
        }
        _checkKeyAction(sigOk && stateOk, happened);
        if (happened) {
            if (action == 0) m.frozenAt = u48(block.timestamp);
            else if (action == 1) m.frozenAt = 0;
            else m.revokedAt = u48(block.timestamp);
        }
    }

    /// The owner changes or removes its guardian.
    function setGuardian(uint256 ownerSeed, uint256 which) external {
        address o = _owner(ownerSeed);
        address g = which % 3 == 0 ? guardian : which % 3 == 1 ? guardian2 : address(0);
        ++calls_keyActions;
        vm.prank(o);
        validator.setGuardian(g);
        model_guardianOf[o] = g;
    }

    // ============================================================== settlers

    /// A payee (honest or a sink) authorises or removes a settler: directly, relayed with its
    /// signature, or by replaying its last relayed signature (refused: the nonce is spent).
    function setSettler(uint256 payeeSeed, uint256 workerSeed, bool allowed, uint256 how) external {
        address p = _payee(payeeSeed);
        address w = workers[bound(workerSeed, 0, workers.length - 1)];
        ++calls_setSettler;
        how %= 3;
        if (how == 2 && _lastSettlerSig[p].sig.length != 0) {
            SettlerSig memory s = _lastSettlerSig[p];
            try validator.setSettlerWithSig(p, s.settler, s.allowed, s.nonce, s.deadline, s.sig) {
                ghost_settlerActionMismatch = true;
            } catch {}
            return;
        }
        if (how == 0) {
            vm.prank(p);
            try validator.setSettler(w, allowed) {
                model_isSettler[p][w] = allowed;
            } catch {
                ghost_settlerActionMismatch = true;
            }
        } else {
            uint256 nonce = validator.nonces(p);
            uint256 deadline = block.timestamp + bound(workerSeed >> 8, 0, 1 hours);
            bytes memory sig = _settlerSig(p, w, allowed, nonce, deadline);
            vm.prank(address(uint160(uint256(keccak256(sig))))); // any relayer
            try validator.setSettlerWithSig(p, w, allowed, nonce, deadline, sig) {
                model_isSettler[p][w] = allowed;
                _lastSettlerSig[p] = SettlerSig(w, allowed, nonce, deadline, sig);
            } catch {
                ghost_settlerActionMismatch = true;
            }
        }
    }

    // ================================================================== time

    /// Jumps to a second on either side of a key's window edge (validAfter, or the end of
    /// its grace) and settles it there at once.
    function warpToEdge(uint256 keySeed, uint256 which) external {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        uint256 t = which % 2 == 0
            ? _stoppedAt(m) + grace + ((which >> 1) % 2) // last second in, first second out
            : m.validAfter - ((which >> 1) % 2); // last second before, first second in
        if (t <= block.timestamp) return;
        ++calls_warp;
        vm.warp(t);
        _settle(k, which >> 2, which >> 3);
    }

    function warp(uint256 secs) external {
        // Mostly minutes to hours; one jump in sixteen spans days, past expiries and grace.
        secs = secs % 16 == 0 ? bound(secs, 1 days, 3 days) : bound(secs, 1, 6 hours);
        ++calls_warp;
        vm.warp(block.timestamp + secs);
    }

    // ================================================================ views
    // Whole lists in one call each: the invariant test reads them after every call.

    function allOwners() external view returns (address[] memory) {
        return owners;
    }

    function allPayees() external view returns (address[] memory) {
        return payees;
    }

    function allWorkers() external view returns (address[] memory) {
        return workers;
    }

    function allKeys() external view returns (address[] memory) {
        return keys;
    }

    function allBrokeKeys() external view returns (address[] memory) {
        return brokeKeys;
    }

    function allProbes() external view returns (address[] memory) {
        return probes;
    }

    /// @dev The models of `list`'s keys, in its order.
    function modelsOf(address[] memory list) external view returns (KeyModel[] memory ms) {
        ms = new KeyModel[](list.length);
        for (uint256 i; i < list.length; ++i) {
            ms[i] = model[list[i]];
        }
    }

    /// @dev Every tab's model, owner-major: tab (owners[i], payees[j]) at i * payees.length + j.
    function allTabs() external view returns (TabModel[] memory ts) {
        uint256 np = payees.length;
        ts = new TabModel[](owners.length * np);
        for (uint256 i; i < owners.length; ++i) {
            for (uint256 j; j < np; ++j) {
                ts[i * np + j] = _tabs[owners[i]][payees[j]];
            }
        }
    }

    /// @dev `paidTo` for every payee, and whether each worker is (in the model) a settler of
    ///      each payee, payee-major.
    function payeeModels() external view returns (uint256[] memory paidTo, bool[] memory settlers) {
        paidTo = new uint256[](payees.length);
        settlers = new bool[](payees.length * workers.length);
        for (uint256 j; j < payees.length; ++j) {
            paidTo[j] = ghost_paidTo[payees[j]];
            for (uint256 w; w < workers.length; ++w) {
                settlers[j * workers.length + w] = model_isSettler[payees[j]][workers[w]];
            }
        }
    }

    function modelOf(address k) external view returns (KeyModel memory) {
        return model[k];
    }

    function tabOf(address o, address p) external view returns (TabModel memory) {
        return _tabs[o][p];
    }
}
