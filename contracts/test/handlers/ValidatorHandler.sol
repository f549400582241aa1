// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SessionKeyValidator} from "../../src/SessionKeyValidator.sol";
import {TestUSDC} from "../../src/TestUSDC.sol";
import {Test} from "../utils/Test.sol";
import {Digests} from "../utils/Digests.sol";

/// @notice Drives a validator through random sequences of everything its users, agents,
///         payees and attackers can do, keeping an independent model of what should happen.
/// @dev `fail_on_revert = false`, so a rule broken inside a call is recorded in a `ghost_…`
///      flag that the invariant test asserts; ghost sums and call counters are public.
///      Pattern: horsefacts/weth-invariant-testing `test/handlers/Handler.sol`.
contract ValidatorHandler is Test {
    string internal constant NAME = "opentab";
    string internal constant VERSION = "1";
    uint256 internal constant MAX_KEYS = 16;
    uint256 internal constant USDC_1 = 1_000_000;
    uint256 internal constant OWNER_PK_BASE = 0xA000;
    uint256 internal constant KEY_PK_BASE = 0x1000;
    uint256 internal constant UNREGISTERED_PK_BASE = 0x9000;

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
        uint256 highestSigned; // highest voucher the key signed for its payee on this validator
        uint256 lastSettled; // `settled` as last seen
    }

    struct Pending {
        uint256 amount;
        uint256 readyAt;
    }

    SessionKeyValidator public immutable validator;
    /// @dev A second deployment with the same name, version, token and keys.
    SessionKeyValidator public immutable twin;
    TestUSDC public immutable usdc;
    uint256 public immutable grace;

    address[] public owners;
    address[] public payees;
    address public immutable guardian = address(0x6A2D);

    address[] public keys;
    mapping(address => KeyModel) public model;
    mapping(address => uint256[]) internal _signed; // every amount a key signed, in order
    address[] public probedUnregistered;

    mapping(address => uint256) public ghost_escrow; // deposits - payouts - withdrawals
    mapping(address => uint256) public ghost_depositedBy;
    mapping(address => uint256) public ghost_outflowOf; // payouts from its keys + withdrawals
    mapping(address => uint256) public ghost_paidTo; // per payee
    mapping(address => Pending) public ghost_pending;

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
    bool public ghost_settledDecreased;
    bool public ghost_settledUnexpectedly;
    bool public ghost_settledOutsideWindow;
    bool public ghost_settledBeforeValid;
    bool public ghost_overpaid;
    bool public ghost_payeeMismatch;
    bool public ghost_validSettleRefused;
    bool public ghost_withdrewEarly;
    bool public ghost_withdrawMismatch;
    bool public ghost_unauthorizedKeyAction;
    bool public ghost_keyOverwritten;

    // Call counters.
    uint256 public calls_settle;
    uint256 public calls_settleOk;
    uint256 public calls_settleBatch;
    uint256 public calls_settleBatchOk;
    uint256 public calls_settleBatchClaimsOk;
    uint256 public calls_replay;
    uint256 public calls_crossReplay;
    uint256 public calls_register;
    uint256 public calls_sign;
    uint256 public calls_freeze;
    uint256 public calls_unfreeze;
    uint256 public calls_revoke;
    uint256 public calls_withdraw;
    uint256 public calls_withdrawOk;
    uint256 public calls_warp;

    constructor(SessionKeyValidator validator_, SessionKeyValidator twin_, TestUSDC usdc_) {
        validator = validator_;
        twin = twin_;
        usdc = usdc_;
        grace = validator_.GRACE();
        for (uint256 i; i < 3; ++i) {
            owners.push(vm.addr(OWNER_PK_BASE + i));
            payees.push(vm.addr(0xFEE0 + i));
        }
        for (uint256 i; i < 3; ++i) {
            vm.prank(owners[i]);
            validator.setGuardian(guardian);
        }
    }

    // ================================================================ helpers

    function _ownerIndex(uint256 seed) internal view returns (uint256) {
        return bound(seed, 0, owners.length - 1);
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

    function _voucherSig(address at, KeyModel memory m, address sessionKey, address to, uint256 amount)
        internal
        view
        returns (bytes memory)
    {
        return _sign(m.pk, Digests.voucher(_separator(at, block.chainid), sessionKey, to, amount));
    }

    function _stoppedAt(KeyModel memory m) internal pure returns (uint256 s) {
        s = m.validUntil;
        if (m.frozenAt != 0 && m.frozenAt < s) s = m.frozenAt;
        if (m.revokedAt != 0 && m.revokedAt < s) s = m.revokedAt;
    }

    function _inWindow(KeyModel memory m) internal view returns (bool) {
        return block.timestamp >= m.validAfter && block.timestamp <= _stoppedAt(m) + grace;
    }

    /// @dev Checks one booked settlement of `k` against the model and records it.
    function _book(address k, uint256 amount, uint256 paid) internal {
        KeyModel storage m = model[k];
        if (m.owner == address(0)) ghost_unregisteredSettled = true;
        if (block.timestamp < m.validAfter) ghost_settledBeforeValid = true;
        if (block.timestamp > _stoppedAt(m) + grace) ghost_settledOutsideWindow = true;
        if (amount > m.highestSigned || amount > m.limit) ghost_overpaid = true;
        if (amount <= m.lastSettled) ghost_replaySucceeded = true;
        else if (paid != amount - m.lastSettled) ghost_overpaid = true;
        // Saturating, so that a violation is recorded rather than reverted away.
        if (paid > ghost_escrow[m.owner]) {
            ghost_overpaid = true;
            ghost_escrow[m.owner] = 0;
        } else {
            ghost_escrow[m.owner] -= paid;
        }
        ghost_outflowOf[m.owner] += paid;
        ghost_paidTo[m.payee] += paid;
        ghost_payouts += paid;
        m.lastSettled = amount;
    }

    /// @dev After every action: `settled` of every key only moves through a booked settlement.
    function _syncSettled() internal {
        for (uint256 i; i < keys.length; ++i) {
            uint256 onChain = validator.sessionKeyOf(keys[i]).settled;
            uint256 seen = model[keys[i]].lastSettled;
            if (onChain < seen) ghost_settledDecreased = true;
            if (onChain > seen) ghost_settledUnexpectedly = true;
        }
    }

    modifier synced() {
        _;
        _syncSettled();
    }

    // ================================================================ escrow

    function deposit(uint256 ownerSeed, uint256 amount) external synced {
        address o = owners[_ownerIndex(ownerSeed)];
        amount = bound(amount, 1, 500 * USDC_1);
        usdc.mint(o, amount);
        vm.startPrank(o);
        usdc.approve(address(validator), amount);
        validator.deposit(amount);
        vm.stopPrank();
        ghost_deposits += amount;
        ghost_depositedBy[o] += amount;
        ghost_escrow[o] += amount;
    }

    function requestWithdrawal(uint256 ownerSeed, uint256 amount) external synced {
        address o = owners[_ownerIndex(ownerSeed)];
        uint256 escrow = ghost_escrow[o];
        if (escrow == 0) return;
        amount = bound(amount, 1, escrow);
        vm.prank(o);
        validator.requestWithdrawal(amount);
        ghost_pending[o] = Pending(amount, block.timestamp + grace);
    }

    function cancelWithdrawal(uint256 ownerSeed) external synced {
        address o = owners[_ownerIndex(ownerSeed)];
        vm.prank(o);
        validator.cancelWithdrawal();
        delete ghost_pending[o];
    }

    function withdraw(uint256 ownerSeed) external synced {
        address o = owners[_ownerIndex(ownerSeed)];
        Pending memory p = ghost_pending[o];
        // Often the owner asks first, and a quarter of the time it comes back once ready.
        if (p.amount == 0 && (ownerSeed >> 9) % 2 == 0 && ghost_escrow[o] != 0) {
            p = Pending(bound(ownerSeed >> 10, 1, ghost_escrow[o]), block.timestamp + grace);
            vm.prank(o);
            validator.requestWithdrawal(p.amount);
            ghost_pending[o] = p;
        }
        if ((ownerSeed >> 8) % 4 == 0 && p.amount != 0 && block.timestamp < p.readyAt) vm.warp(p.readyAt);
        ++calls_withdraw;
        uint256 balanceBefore = usdc.balanceOf(o);
        vm.prank(o);
        try validator.withdraw() returns (uint256 out) {
            ++calls_withdrawOk;
            if (p.amount == 0 || block.timestamp < p.readyAt) ghost_withdrewEarly = true;
            uint256 expected = p.amount < ghost_escrow[o] ? p.amount : ghost_escrow[o];
            if (out != expected || usdc.balanceOf(o) - balanceBefore != out) ghost_withdrawMismatch = true;
            ghost_escrow[o] = out > ghost_escrow[o] ? 0 : ghost_escrow[o] - out;
            ghost_outflowOf[o] += out;
            ghost_withdrawals += out;
            delete ghost_pending[o];
        } catch {
            // Refusing is right only without a ready request.
            if (p.amount != 0 && block.timestamp >= p.readyAt) ghost_withdrawMismatch = true;
        }
    }

    // ========================================================== registration

    function register(uint256 ownerSeed, uint256 payeeSeed, uint256 limit, uint256 startOffset, uint256 duration)
        external
        synced
    {
        if (keys.length >= MAX_KEYS) return;
        uint256 oi = _ownerIndex(ownerSeed);
        address o = owners[oi];
        address to = payees[bound(payeeSeed, 0, payees.length - 1)];
        uint256 pk = KEY_PK_BASE + keys.length;
        address k = vm.addr(pk);
        uint128 lim = uint128(bound(limit, 1, 300 * USDC_1));
        // A quarter of the keys start in the future; the rest started up to 30 minutes ago.
        uint48 validAfter = startOffset % 4 == 0
            ? u48(block.timestamp + bound(startOffset, 1, 6 hours))
            : u48(block.timestamp - bound(startOffset, 0, 30 minutes));
        uint48 validUntil = u48(block.timestamp + bound(duration, 1 hours, 10 days));
        if (validUntil <= validAfter) validUntil = validAfter + 1 hours;

        ++calls_register;
        if (duration % 2 == 0) {
            vm.prank(o);
            validator.registerSessionKey(k, to, lim, validAfter, validUntil);
        } else {
            _registerWithSig(oi, k, to, lim, validAfter, validUntil);
        }
        // The same key at the twin deployment, with plenty of escrow there.
        usdc.mint(o, lim);
        vm.startPrank(o);
        usdc.approve(address(twin), lim);
        twin.deposit(lim);
        twin.registerSessionKey(k, to, lim, validAfter, validUntil);
        vm.stopPrank();

        keys.push(k);
        model[k] = KeyModel(pk, o, to, lim, validAfter, validUntil, 0, 0, 0, 0);
    }

    /// @dev The UI's path: the owner signs, a relayer submits.
    function _registerWithSig(uint256 oi, address k, address to, uint128 lim, uint48 validAfter, uint48 validUntil)
        internal
    {
        address o = owners[oi];
        uint256 nonce = validator.nonces(o);
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 digest = Digests.registration(
            _separator(address(validator), block.chainid), o, k, to, lim, validAfter, validUntil, nonce, deadline
        );
        bytes memory sig = _sign(OWNER_PK_BASE + oi, digest);
        vm.prank(address(uint160(uint256(digest)))); // any relayer
        validator.registerSessionKeyWithSig(k, to, lim, validAfter, validUntil, o, nonce, deadline, sig);
    }

    // ============================================================== vouchers

    /// The agent serves more calls and signs a higher voucher; one time in eight a runaway
    /// agent signs past its limit.
    function signVoucher(uint256 keySeed, uint256 delta) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        _signNext(k, delta);
    }

    function _signNext(address k, uint256 delta) internal {
        KeyModel storage m = model[k];
        uint256 next;
        if (delta % 8 == 0) {
            next = uint256(m.limit) + bound(delta >> 3, 1, m.limit / 4 + 1);
        } else {
            uint256 best = _bestVoucher(k);
            next = best + bound(delta, 1, m.limit / 4 + 1);
            if (next > m.limit) next = m.limit;
            if (next <= best) return; // already at the limit
        }
        if (next > m.highestSigned) m.highestSigned = next;
        _signed[k].push(next);
        ++calls_sign;
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

    /// Settles the key's best voucher (or, one time in eight, any voucher it signed). When
    /// the best one is settled already, the agent usually signs a new one first.
    function settle(uint256 keySeed, uint256 voucherSeed, uint256 callerSeed) external synced {
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
        KeyModel memory m = model[k];
        uint256[] storage signed = _signed[k];
        uint256 amount = voucherSeed % 8 == 0 ? signed[bound(voucherSeed, 0, signed.length - 1)] : _bestVoucher(k);
        if (amount == 0) amount = signed[0];
        bytes memory sig = _voucherSig(address(validator), m, k, m.payee, amount);

        bool valid = _inWindow(m) && amount <= m.limit && amount > m.lastSettled
            && amount - m.lastSettled <= ghost_escrow[m.owner];
        uint256 payeeBefore = usdc.balanceOf(m.payee);
        ++calls_settle;
        vm.prank(address(uint160(bound(callerSeed, 1, type(uint160).max))));
        try validator.settle(k, amount, sig) returns (uint256 paid) {
            ++calls_settleOk;
            if (usdc.balanceOf(m.payee) - payeeBefore != paid) ghost_payeeMismatch = true;
            _book(k, amount, paid);
        } catch {
            if (valid) ghost_validSettleRefused = true;
        }
    }

    /// Settles the highest vouchers of up to three keys in one batch.
    function settleBatch(uint256 seedA, uint256 seedB, uint256 seedC) external synced {
        address[3] memory picked = [_key(seedA), _key(seedB), _key(seedC)];
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        uint256 n;
        for (uint256 i; i < 3; ++i) {
            address k = picked[i];
            if (k == address(0)) continue;
            if (_bestVoucher(k) <= model[k].lastSettled) _signNext(k, seedA >> (8 * (i + 1)));
            if (_signed[k].length == 0) continue;
            bool dup;
            for (uint256 j; j < n; ++j) {
                if (claims[j].sessionKey == k) dup = true;
            }
            if (dup) continue;
            KeyModel memory m = model[k];
            uint256 amount = _bestVoucher(k);
            if (amount == 0) continue;
            claims[n++] = SessionKeyValidator.Claim(k, amount, _voucherSig(address(validator), m, k, m.payee, amount));
        }
        if (n == 0) return;
        assembly ("memory-safe") {
            mstore(claims, n)
        }
        uint256[3] memory payeeBefore;
        for (uint256 i; i < 3; ++i) {
            payeeBefore[i] = usdc.balanceOf(payees[i]);
        }
        ++calls_settleBatch;
        try validator.settleBatch(claims) returns (uint256 total) {
            ++calls_settleBatchOk;
            calls_settleBatchClaimsOk += n;
            uint256 booked;
            for (uint256 i; i < n; ++i) {
                address k = claims[i].sessionKey;
                uint256 seen = model[k].lastSettled;
                uint256 paid = claims[i].cumulativeAmount > seen ? claims[i].cumulativeAmount - seen : 0;
                _book(k, claims[i].cumulativeAmount, paid);
                booked += paid;
            }
            uint256 received;
            for (uint256 i; i < 3; ++i) {
                received += usdc.balanceOf(payees[i]) - payeeBefore[i];
            }
            if (total != booked || received != total) ghost_payeeMismatch = true;
        } catch {}
    }

    // ========================================================= replay attacks

    /// Resubmits a voucher the key signed that is not above what was settled.
    function replayOldVoucher(uint256 keySeed, uint256 idx) external synced {
        address k = _key(keySeed);
        if (k == address(0) || _signed[k].length == 0) return;
        KeyModel memory m = model[k];
        uint256 amount = _signed[k][bound(idx, 0, _signed[k].length - 1)];
        if (amount > m.lastSettled) return; // not settled yet: not a replay
        ++calls_replay;
        try validator.settle(k, amount, _voucherSig(address(validator), m, k, m.payee, amount)) {
            ghost_replaySucceeded = true;
        } catch {}
    }

    /// Submits key A's next voucher as key B's.
    function replayCrossKey(uint256 seedA, uint256 seedB) external synced {
        address a = _key(seedA);
        address b = _key(seedB);
        if (a == address(0) || a == b) return;
        KeyModel memory ma = model[a];
        uint256 amount = model[b].lastSettled + 1;
        ++calls_crossReplay;
        // Signed by A over B's terms, and A's own voucher presented for B.
        try validator.settle(b, amount, _voucherSig(address(validator), ma, b, model[b].payee, amount)) {
            ghost_crossKeySucceeded = true;
        } catch {}
        try validator.settle(b, amount, _voucherSig(address(validator), ma, a, ma.payee, amount)) {
            ghost_crossKeySucceeded = true;
        } catch {}
    }

    /// The key signs a voucher naming a payee it was not registered for.
    function replayCrossPayee(uint256 keySeed, uint256 payeeSeed, uint256 delta) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel memory m = model[k];
        address other = payees[bound(payeeSeed, 0, payees.length - 1)];
        if (other == m.payee) other = address(uint160(other) + 0x100);
        uint256 amount = m.lastSettled + bound(delta, 1, m.limit);
        ++calls_crossReplay;
        try validator.settle(k, amount, _voucherSig(address(validator), m, k, other, amount)) {
            ghost_crossPayeeSucceeded = true;
        } catch {}
    }

    /// A voucher that would settle here, submitted on another chain id.
    function replayCrossChain(uint256 keySeed, uint256 chainId) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        uint256 home = block.chainid;
        chainId = bound(chainId, 1, type(uint64).max);
        if (chainId == home) chainId = home + 1;
        KeyModel memory m = model[k];
        uint256 amount = m.lastSettled + 1;
        bytes memory sig = _voucherSig(address(validator), m, k, m.payee, amount);
        ++calls_crossReplay;
        vm.chainId(chainId);
        try validator.settle(k, amount, sig) {
            ghost_crossChainSucceeded = true;
        } catch {}
        vm.chainId(home);
    }

    /// Vouchers for the twin deployment submitted here, and this one's at the twin.
    function replayCrossDeployment(uint256 keySeed) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel memory m = model[k];
        uint256 amount = m.lastSettled + 1;
        uint256 twinAmount = twin.sessionKeyOf(k).settled + 1;
        ++calls_crossReplay;
        try validator.settle(k, amount, _voucherSig(address(twin), m, k, m.payee, amount)) {
            ghost_crossDeploymentSucceeded = true;
        } catch {}
        try twin.settle(k, twinAmount, _voucherSig(address(validator), m, k, m.payee, twinAmount)) {
            ghost_crossDeploymentSucceeded = true;
        } catch {}
    }

    /// Another owner tries to take over a registered key, pointing it at its own payee.
    function hijackKey(uint256 keySeed, uint256 ownerSeed) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        address o = owners[_ownerIndex(ownerSeed)];
        ++calls_crossReplay;
        vm.prank(o);
        try validator.registerSessionKey(k, address(0xBAD0), type(uint128).max, 0, u48(block.timestamp + 1 days)) {
            ghost_keyOverwritten = true;
        } catch {}
    }

    /// A key that was never registered here signs and settles a voucher.
    function settleUnregistered(uint256 pkSeed, uint256 payeeSeed, uint256 amount) external synced {
        uint256 pk = UNREGISTERED_PK_BASE + bound(pkSeed, 0, 63);
        address k = vm.addr(pk);
        address to = payees[bound(payeeSeed, 0, payees.length - 1)];
        amount = bound(amount, 1, 300 * USDC_1);
        if (probedUnregistered.length < 64) probedUnregistered.push(k);
        ++calls_crossReplay;
        try validator.settle(k, amount, _sign(pk, Digests.voucher(_separator(address(validator), block.chainid), k, to, amount))) {
            ghost_unregisteredSettled = true;
        } catch {}
    }

    // ===================================================== freeze and revoke

    function freeze(uint256 keySeed, uint256 who) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        address caller = who % 3 == 0 ? m.owner : who % 3 == 1 ? guardian : address(0x5778);
        ++calls_freeze;
        vm.prank(caller);
        try validator.freeze(k) {
            if (caller != m.owner && caller != guardian) ghost_unauthorizedKeyAction = true;
            m.frozenAt = u48(block.timestamp);
        } catch {}
    }

    function unfreeze(uint256 keySeed, uint256 who) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        address caller = who % 4 == 0 ? guardian : m.owner; // the guardian must never succeed
        ++calls_unfreeze;
        vm.prank(caller);
        try validator.unfreeze(k) {
            if (caller != m.owner) ghost_unauthorizedKeyAction = true;
            m.frozenAt = 0;
        } catch {}
    }

    function revoke(uint256 keySeed) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel storage m = model[k];
        ++calls_revoke;
        vm.prank(m.owner);
        validator.revoke(k);
        m.revokedAt = u48(block.timestamp);
    }

    // ================================================================== time

    /// Jumps to a second on either side of a key's window edge (validAfter, or the end of
    /// its grace) and settles it there at once.
    function warpToEdge(uint256 keySeed, uint256 which) external synced {
        address k = _key(keySeed);
        if (k == address(0)) return;
        KeyModel memory m = model[k];
        uint256 t = which % 2 == 0
            ? _stoppedAt(m) + grace + ((which >> 1) % 2) // last second in, first second out
            : m.validAfter - ((which >> 1) % 2); // last second before, first second in
        if (t <= block.timestamp) return;
        ++calls_warp;
        vm.warp(t);
        _settle(k, which >> 2, which >> 3);
    }

    function warp(uint256 secs) external synced {
        // Mostly minutes to hours; one jump in sixteen spans days, past expiries and grace.
        secs = secs % 16 == 0 ? bound(secs, 1 days, 3 days) : bound(secs, 1, 6 hours);
        ++calls_warp;
        vm.warp(block.timestamp + secs);
    }

    // ================================================================ views

    function keyCount() external view returns (uint256) {
        return keys.length;
    }

    function ownerCount() external view returns (uint256) {
        return owners.length;
    }

    function payeeCount() external view returns (uint256) {
        return payees.length;
    }

    function probedCount() external view returns (uint256) {
        return probedUnregistered.length;
    }

    function modelOf(address k) external view returns (KeyModel memory) {
        return model[k];
    }
}
