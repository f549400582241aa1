// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title SessionKeyValidator
/// @notice Tabs, session-key registry and voucher settlement for opentab.
/// @dev An owner opens a *tab* with a payee by depositing USDC for that payee alone, and
///      registers session keys, each with a spend limit, a validity window and that one payee.
///      The agent holding a key signs cumulative vouchers (EIP-712 `Voucher`). The payee, or a
///      settler it authorised, settles the highest one; what it adds to the key's `settled`
///      moves from the owner's tab with the payee to the payee. A short tab pays what it holds
///      and the rest stays claimable.
///
///      Money leaves a tab only to its payee (settlement) or, after `GRACE`, to its owner
///      (withdrawal): no other payee and no key of the owner's own can draw on it. A key stops
///      being servable when it is frozen, revoked or expires; vouchers it signed before stay
///      settleable for `GRACE` seconds after that moment (up to and including the last second),
///      so nobody can freeze, revoke or withdraw to dodge a bill; withdrawals complete only
///      strictly after their own grace window.
///
///      Payouts are pushed to the payee in the settling call, so the token balance of this
///      contract always equals the sum of all tabs.
contract SessionKeyValidator is EIP712, Nonces, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @dev Three storage slots; the settle path reads all three and writes the last.
    struct SessionKey {
        address owner;
        uint48 validAfter;
        uint48 validUntil;
        address payee;
        uint48 frozenAt; // 0 = not frozen
        uint48 revokedAt; // 0 = not revoked
        uint128 limit;
        uint128 settled;
    }

    /// @notice What an owner holds for one payee: one storage slot, so a settlement reads and
    ///         writes one word for the tab.
    struct Tab {
        uint128 balance; // pending withdrawal included
        uint80 withdrawing; // requested to leave (0 = no request)
        uint48 graceEndsAt; // the payee may settle until this second; the owner withdraws after it
    }

    /// @notice One key to register in `registerSessionKeys` and `registerSessionKeysWithSig`
    ///         (and the EIP-712 type of each entry of a `RegisterSessionKeys`).
    struct KeyTerms {
        address sessionKey;
        address payee;
        uint128 limit;
        uint48 validAfter;
        uint48 validUntil;
    }

    /// @notice One voucher to settle in `settleBatch`.
    struct Claim {
        address sessionKey;
        uint256 cumulativeAmount;
        bytes signature;
    }

    /// @notice Why `settleBatch` skipped a claim (`settle` reverts with the matching error).
    enum SkipReason {
        None,
        UnknownKey,
        WrongPayee,
        NotYetValid,
        WindowClosed,
        AboveLimit,
        NothingToSettle,
        InvalidSignature,
        EmptyTab
    }

    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address sessionKey,address payee,uint256 cumulativeAmount)");
    bytes32 public constant REGISTER_TYPEHASH = keccak256(
        "RegisterSessionKey(address owner,address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant KEY_TERMS_TYPEHASH =
        keccak256("KeyTerms(address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil)");
    bytes32 public constant REGISTER_BATCH_TYPEHASH = keccak256(
        "RegisterSessionKeys(address owner,KeyTerms[] keys,uint256 nonce,uint256 deadline)KeyTerms(address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil)"
    );
    bytes32 public constant FREEZE_TYPEHASH =
        keccak256("FreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 public constant UNFREEZE_TYPEHASH =
        keccak256("UnfreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 public constant REVOKE_TYPEHASH =
        keccak256("RevokeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 public constant SET_SETTLER_TYPEHASH =
        keccak256("SetSettler(address payee,address settler,bool allowed,uint256 nonce,uint256 deadline)");

    /// @notice Bounds on `GRACE`, as x402's batch-settlement allows.
    uint256 public constant MIN_GRACE = 15 minutes;
    uint256 public constant MAX_GRACE = 30 days;

    /// @notice The token held in tabs.
    IERC20 public immutable USDC;
    /// @notice Seconds a payee keeps to settle after a key stops, and a withdrawal waits.
    uint256 public immutable GRACE;

    mapping(address sessionKey => SessionKey) internal _keys;
    /// @notice Each owner's tab with each payee.
    mapping(address owner => mapping(address payee => Tab)) public tabOf;
    /// @notice Addresses a payee lets settle for it (its settlement workers).
    mapping(address payee => mapping(address settler => bool)) public isSettler;
    /// @notice A service each owner lets freeze its keys (never unfreeze, never spend).
    mapping(address owner => address) public guardianOf;

    event Deposited(address indexed owner, address indexed payee, uint256 amount);
    event SessionKeyRegistered(
        address indexed owner,
        address indexed sessionKey,
        address indexed payee,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil
    );
    event SessionKeyFrozen(address indexed owner, address indexed sessionKey, address by, uint48 frozenAt);
    event SessionKeyUnfrozen(address indexed owner, address indexed sessionKey);
    event SessionKeyRevoked(address indexed owner, address indexed sessionKey, uint48 revokedAt);
    /// @notice `amount` moved from the key owner's tab to the key's payee; `settled` is the
    ///         key's new total. Owner and payee are the key's (see `SessionKeyRegistered`); they
    ///         are left out to keep the hottest call cheap.
    event Settled(address indexed sessionKey, uint256 amount, uint256 settled);
    event ClaimSkipped(address indexed sessionKey, SkipReason reason);
    event SettlerSet(address indexed payee, address indexed settler, bool allowed);
    event GuardianSet(address indexed owner, address indexed guardian);
    event WithdrawalRequested(address indexed owner, address indexed payee, uint256 amount, uint48 graceEndsAt);
    event WithdrawalCancelled(address indexed owner, address indexed payee);
    event Withdrawn(address indexed owner, address indexed payee, uint256 amount);

    error ZeroAddress();
    error ZeroAmount();
    error ZeroLimit();
    error InvalidPayee(address payee);
    error GraceOutOfRange(uint256 grace);
    error InvalidValidityWindow(uint48 validAfter, uint48 validUntil);
    error AlreadyExpired(uint48 validUntil);
    error SessionKeyExists(address sessionKey);
    error UnknownSessionKey(address sessionKey);
    error NotKeyOwner(address sessionKey, address caller);
    error NotOwnerOrGuardian(address sessionKey, address caller);
    error NotSettler(address payee, address caller);
    error KeyFrozen(address sessionKey);
    error KeyNotFrozen(address sessionKey);
    error KeyRevoked(address sessionKey);
    error KeyNotYetValid(address sessionKey, uint48 validAfter);
    error SettlementWindowClosed(address sessionKey, uint256 closedAt);
    error SignatureExpired(uint256 deadline);
    error InvalidOwnerSignature(address owner);
    error InvalidPayeeSignature(address payee);
    error InvalidVoucherSignature(address sessionKey);
    error VoucherAboveLimit(address sessionKey, uint256 cumulativeAmount, uint128 limit);
    error NothingToSettle(address sessionKey, uint256 cumulativeAmount, uint128 settled);
    error EmptyTab(address owner, address payee);
    error InsufficientTab(address owner, address payee, uint256 needed, uint256 available);
    error NoPendingWithdrawal(address owner, address payee);
    error WithdrawalNotReady(uint48 graceEndsAt);
    error EmptyBatch();

    /// @param name EIP-712 domain name (opentab deploys with "opentab").
    /// @param version EIP-712 domain version (opentab deploys with "1").
    /// @param usdc The token held in tabs.
    /// @param grace Settlement grace and withdrawal delay in seconds, 15 minutes to 30 days.
    constructor(string memory name, string memory version, IERC20 usdc, uint256 grace) EIP712(name, version) {
        if (address(usdc) == address(0)) revert ZeroAddress();
        if (grace < MIN_GRACE || grace > MAX_GRACE) revert GraceOutOfRange(grace);
        USDC = usdc;
        GRACE = grace;
    }

    // -------------------------------------------------------------------- tabs

    /// @notice Pulls `amount` USDC from the caller into its tab with `payee` (approve first).
    /// @dev Credits the balance actually received, so a fee-charging token cannot inflate a tab.
    function deposit(address payee, uint256 amount) external nonReentrant {
        _checkPayee(payee);
        if (amount == 0) revert ZeroAmount();
        uint256 before = USDC.balanceOf(address(this));
        USDC.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = USDC.balanceOf(address(this)) - before;
        Tab storage tab = tabOf[msg.sender][payee];
        tab.balance = SafeCast.toUint128(tab.balance + received);
        emit Deposited(msg.sender, payee, received);
    }

    /// @notice Asks to take `amount` out of the tab with `payee`. It can leave strictly after
    ///         `GRACE` has passed, so the payee settles first. Replaces any pending request.
    function requestWithdrawal(address payee, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Tab storage tab = tabOf[msg.sender][payee];
        uint256 balance = tab.balance;
        if (amount > balance) revert InsufficientTab(msg.sender, payee, amount, balance);
        // Timestamps fit 48 bits for millions of years.
        // forge-lint: disable-next-line(unsafe-typecast)
        uint48 graceEndsAt = uint48(block.timestamp + GRACE);
        tab.withdrawing = SafeCast.toUint80(amount);
        tab.graceEndsAt = graceEndsAt;
        emit WithdrawalRequested(msg.sender, payee, amount, graceEndsAt);
    }

    /// @notice Drops the caller's pending withdrawal from its tab with `payee`.
    function cancelWithdrawal(address payee) external {
        Tab storage tab = tabOf[msg.sender][payee];
        if (tab.withdrawing == 0) revert NoPendingWithdrawal(msg.sender, payee);
        (tab.withdrawing, tab.graceEndsAt) = (0, 0);
        emit WithdrawalCancelled(msg.sender, payee);
    }

    /// @notice Completes the caller's withdrawal from its tab with `payee`, strictly after its
    ///         grace window. Pays what is left of the requested amount after settlements made
    ///         during the wait.
    function withdraw(address payee) external nonReentrant returns (uint256 amount) {
        Tab memory tab = tabOf[msg.sender][payee];
        if (tab.withdrawing == 0) revert NoPendingWithdrawal(msg.sender, payee);
        // The payee may still settle in the last second of the window; withdrawing waits for
        // the next one, so the two never compete.
        if (block.timestamp <= tab.graceEndsAt) revert WithdrawalNotReady(tab.graceEndsAt);
        amount = tab.withdrawing < tab.balance ? tab.withdrawing : tab.balance;
        // amount <= balance, a uint128.
        // forge-lint: disable-next-line(unsafe-typecast)
        tabOf[msg.sender][payee] = Tab(tab.balance - uint128(amount), 0, 0);
        emit Withdrawn(msg.sender, payee, amount);
        if (amount != 0) USDC.safeTransfer(msg.sender, amount);
    }

    /// @notice Lets `guardian` freeze the caller's keys (address(0) removes it).
    function setGuardian(address guardian) external {
        guardianOf[msg.sender] = guardian;
        emit GuardianSet(msg.sender, guardian);
    }

    // ---------------------------------------------------------------- settlers

    /// @notice Lets `settler` settle vouchers payable to the caller (or stops it).
    function setSettler(address settler, bool allowed) external {
        _setSettler(msg.sender, settler, allowed);
    }

    /// @notice `setSettler`, authorised by the payee's EIP-712 `SetSettler` signature (EOA or
    ///         ERC-1271), so a payee whose key is kept cold never sends a transaction.
    function setSettlerWithSig(
        address payee,
        address settler,
        bool allowed,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        if (payee == address(0)) revert ZeroAddress();
        _useCheckedNonce(payee, nonce);
        bytes32 digest = settlerDigest(payee, settler, allowed, nonce, deadline);
        if (!SignatureChecker.isValidSignatureNow(payee, digest, signature)) revert InvalidPayeeSignature(payee);
        _setSettler(payee, settler, allowed);
    }

    function _setSettler(address payee, address settler, bool allowed) internal {
        if (settler == address(0)) revert ZeroAddress();
        isSettler[payee][settler] = allowed;
        emit SettlerSet(payee, settler, allowed);
    }

    /// @dev Only the payee and its settlers settle: nobody can front-run a claim out of a
    ///      batch, and a leaked session key cannot push its own vouchers on-chain.
    function _checkSettler(address payee) internal view {
        if (msg.sender != payee && !isSettler[payee][msg.sender]) revert NotSettler(payee, msg.sender);
    }

    /// @dev Pays `amount` to `to`. The settle paths' transfer, written out so that it costs no
    ///      memory allocation: reverts unless the token call succeeds and returns true or nothing.
    function _pay(address to, uint256 amount) internal {
        IERC20 token = USDC;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, 0xa9059cbb00000000000000000000000000000000000000000000000000000000) // transfer(address,uint256)
            mstore(add(m, 0x04), and(to, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(m, 0x24), amount)
            let ok := call(gas(), token, 0, m, 0x44, 0x00, 0x20)
            // Success: the call went through and returned a full word equal to true, or returned
            // nothing from a token that has code. (Fewer than 32 bytes leave stale scratch at 0x00,
            // so they never count as true.)
            let returnedTrue := and(gt(returndatasize(), 31), eq(mload(0x00), 1))
            let returnedNothing := and(iszero(returndatasize()), gt(extcodesize(token), 0))
            if iszero(and(ok, or(returnedTrue, returnedNothing))) {
                returndatacopy(m, 0, returndatasize())
                revert(m, returndatasize())
            }
        }
    }

    function _checkPayee(address payee) internal view {
        if (payee == address(0)) revert ZeroAddress();
        // Paying the validator itself would strand tokens no tab accounts for.
        if (payee == address(this)) revert InvalidPayee(payee);
    }

    // ------------------------------------------------------------ registration

    /// @notice Registers `sessionKey` for the caller; it draws only on the caller's tab with `payee`.
    function registerSessionKey(address sessionKey, address payee, uint128 limit, uint48 validAfter, uint48 validUntil)
        external
    {
        _register(msg.sender, sessionKey, payee, limit, validAfter, validUntil);
    }

    /// @notice Registers many keys for the caller in one transaction (fleets of agents). All or
    ///         nothing: one invalid entry, or one key registered before, reverts the batch with
    ///         the error `registerSessionKey` would give for it.
    function registerSessionKeys(KeyTerms[] calldata keys) external {
        if (keys.length == 0) revert EmptyBatch();
        _registerAll(msg.sender, keys);
    }

    /// @notice Registers many keys for `owner`, who signed one EIP-712 `RegisterSessionKeys`
    ///         over all of them (an EOA signature, or ERC-1271 for contract owners). Anyone may
    ///         relay it. All or nothing, like `registerSessionKeys`; the signature covers the
    ///         entries in order, so a relayer can neither drop, add, reorder nor change one.
    function registerSessionKeysWithSig(
        KeyTerms[] calldata keys,
        address owner,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external {
        if (keys.length == 0) revert EmptyBatch();
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        if (owner == address(0)) revert ZeroAddress();
        bytes32 digest = registrationsDigest(owner, keys, nonce, deadline);
        _useCheckedNonce(owner, nonce);
        if (!SignatureChecker.isValidSignatureNow(owner, digest, signature)) revert InvalidOwnerSignature(owner);
        _registerAll(owner, keys);
    }

    /// @notice Registers `sessionKey` for `owner`, who signed an EIP-712 `RegisterSessionKey`
    ///         (an EOA signature, or ERC-1271 for contract owners). Anyone may relay it.
    function registerSessionKeyWithSig(
        address sessionKey,
        address payee,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil,
        address owner,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        if (owner == address(0)) revert ZeroAddress();
        bytes32 digest = registrationDigest(owner, sessionKey, payee, limit, validAfter, validUntil, nonce, deadline);
        _useCheckedNonce(owner, nonce);
        if (!SignatureChecker.isValidSignatureNow(owner, digest, signature)) revert InvalidOwnerSignature(owner);
        _register(owner, sessionKey, payee, limit, validAfter, validUntil);
    }

    function _registerAll(address owner, KeyTerms[] calldata keys) internal {
        uint256 n = keys.length;
        for (uint256 i; i < n; ++i) {
            KeyTerms calldata k = keys[i];
            _register(owner, k.sessionKey, k.payee, k.limit, k.validAfter, k.validUntil);
        }
    }

    function _register(
        address owner,
        address sessionKey,
        address payee,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil
    ) internal {
        if (sessionKey == address(0)) revert ZeroAddress();
        _checkPayee(payee);
        if (limit == 0) revert ZeroLimit();
        if (validAfter >= validUntil) revert InvalidValidityWindow(validAfter, validUntil);
        if (validUntil <= block.timestamp) revert AlreadyExpired(validUntil);
        // A key is registered once, ever: a revoked key's vouchers must not come back to life.
        if (_keys[sessionKey].owner != address(0)) revert SessionKeyExists(sessionKey);
        _keys[sessionKey] = SessionKey({
            owner: owner,
            validAfter: validAfter,
            validUntil: validUntil,
            payee: payee,
            frozenAt: 0,
            revokedAt: 0,
            limit: limit,
            settled: 0
        });
        emit SessionKeyRegistered(owner, sessionKey, payee, limit, validAfter, validUntil);
    }

    // ------------------------------------------------------- freeze and revoke

    /// @notice Freezes `sessionKey`: the gateway stops serving it; vouchers already issued stay
    ///         settleable for `GRACE`. Callable by the owner or the owner's guardian.
    function freeze(address sessionKey) external {
        address owner = _ownerOf(sessionKey);
        if (msg.sender != owner && msg.sender != guardianOf[owner]) revert NotOwnerOrGuardian(sessionKey, msg.sender);
        _freeze(sessionKey, owner, msg.sender);
    }

    /// @notice `freeze`, authorised by the owner's EIP-712 `FreezeSessionKey` signature.
    function freezeWithSig(address sessionKey, uint256 nonce, uint256 deadline, bytes calldata signature) external {
        address owner = _checkOwnerSignature(FREEZE_TYPEHASH, sessionKey, nonce, deadline, signature);
        _freeze(sessionKey, owner, owner);
    }

    /// @notice Lifts a freeze. Owner only: a guardian can stop spending, never restart it.
    function unfreeze(address sessionKey) external {
        address owner = _ownerOf(sessionKey);
        if (msg.sender != owner) revert NotKeyOwner(sessionKey, msg.sender);
        _unfreeze(sessionKey, owner);
    }

    /// @notice `unfreeze`, authorised by the owner's EIP-712 `UnfreezeSessionKey` signature.
    function unfreezeWithSig(address sessionKey, uint256 nonce, uint256 deadline, bytes calldata signature) external {
        address owner = _checkOwnerSignature(UNFREEZE_TYPEHASH, sessionKey, nonce, deadline, signature);
        _unfreeze(sessionKey, owner);
    }

    /// @notice Revokes `sessionKey` for good; vouchers already issued stay settleable for `GRACE`.
    function revoke(address sessionKey) external {
        address owner = _ownerOf(sessionKey);
        if (msg.sender != owner) revert NotKeyOwner(sessionKey, msg.sender);
        _revoke(sessionKey, owner);
    }

    /// @notice `revoke`, authorised by the owner's EIP-712 `RevokeSessionKey` signature.
    function revokeWithSig(address sessionKey, uint256 nonce, uint256 deadline, bytes calldata signature) external {
        address owner = _checkOwnerSignature(REVOKE_TYPEHASH, sessionKey, nonce, deadline, signature);
        _revoke(sessionKey, owner);
    }

    function _freeze(address sessionKey, address owner, address by) internal {
        SessionKey storage k = _keys[sessionKey];
        if (k.revokedAt != 0) revert KeyRevoked(sessionKey);
        if (k.frozenAt != 0) revert KeyFrozen(sessionKey);
        k.frozenAt = uint48(block.timestamp);
        emit SessionKeyFrozen(owner, sessionKey, by, uint48(block.timestamp));
    }

    function _unfreeze(address sessionKey, address owner) internal {
        SessionKey storage k = _keys[sessionKey];
        if (k.revokedAt != 0) revert KeyRevoked(sessionKey);
        if (k.frozenAt == 0) revert KeyNotFrozen(sessionKey);
        k.frozenAt = 0;
        emit SessionKeyUnfrozen(owner, sessionKey);
    }

    function _revoke(address sessionKey, address owner) internal {
        SessionKey storage k = _keys[sessionKey];
        if (k.revokedAt != 0) revert KeyRevoked(sessionKey);
        k.revokedAt = uint48(block.timestamp);
        emit SessionKeyRevoked(owner, sessionKey, uint48(block.timestamp));
    }

    function _ownerOf(address sessionKey) internal view returns (address owner) {
        owner = _keys[sessionKey].owner;
        if (owner == address(0)) revert UnknownSessionKey(sessionKey);
    }

    /// @dev Checks an owner-signed key action and spends the owner's nonce; returns the owner.
    function _checkOwnerSignature(
        bytes32 typehash,
        address sessionKey,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) internal returns (address owner) {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        owner = _ownerOf(sessionKey);
        _useCheckedNonce(owner, nonce);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(typehash, sessionKey, nonce, deadline)));
        if (!SignatureChecker.isValidSignatureNow(owner, digest, signature)) revert InvalidOwnerSignature(owner);
    }

    // -------------------------------------------------------------- settlement

    /// @notice Settles `sessionKey`'s voucher for `cumulativeAmount`: pays what it adds to the
    ///         key's `settled`, up to what the owner's tab with the payee holds, to the payee.
    ///         Callable by the key's payee or a settler it authorised.
    /// @return paid The amount moved by this call (less than the voucher's increase when the
    ///         tab is short; the rest stays claimable with the same voucher).
    /// @dev No reentrancy guard on the settle paths: every write happens before the one
    ///      transfer, and the token is the immutable USDC; the guard's cost is left out of the
    ///      hottest call.
    function settle(address sessionKey, uint256 cumulativeAmount, bytes calldata signature)
        external
        returns (uint256 paid)
    {
        SessionKey memory k = _loadKey(sessionKey);
        if (k.owner == address(0)) revert UnknownSessionKey(sessionKey);
        _checkSettler(k.payee);
        SkipReason reason;
        (paid, reason) = _claim(sessionKey, k, cumulativeAmount, signature);
        if (reason != SkipReason.None) _revertFor(reason, sessionKey, k, cumulativeAmount);
        _pay(k.payee, paid);
    }

    /// @notice Settles vouchers of keys payable to `payee` in one transaction, with one transfer.
    ///         Best-effort: a claim that cannot pay emits `ClaimSkipped` and the others still
    ///         settle. Callable by `payee` or a settler it authorised.
    /// @return total The amount moved by this call.
    function settleBatch(address payee, Claim[] calldata claims) external returns (uint256 total) {
        uint256 n = claims.length;
        if (n == 0) revert EmptyBatch();
        _checkSettler(payee);
        for (uint256 i; i < n; ++i) {
            Claim calldata c = claims[i];
            SessionKey memory k = _loadKey(c.sessionKey);
            (uint256 paid, SkipReason reason) = k.owner == address(0)
                ? (0, SkipReason.UnknownKey)
                : k.payee != payee ? (0, SkipReason.WrongPayee) : _claim(c.sessionKey, k, c.cumulativeAmount, c.signature);
            if (reason == SkipReason.None) total += paid;
            else emit ClaimSkipped(c.sessionKey, reason);
        }
        if (total != 0) _pay(payee, total);
    }

    /// @dev Checks one voucher of a registered key and books what it pays: tab down, `settled`
    ///      up. Returns the reason instead of reverting, so a batch can skip it. The caller
    ///      checks the settler and transfers.
    function _claim(address sessionKey, SessionKey memory k, uint256 cumulativeAmount, bytes calldata signature)
        internal
        returns (uint256 paid, SkipReason reason)
    {
        if (block.timestamp < k.validAfter) return (0, SkipReason.NotYetValid);
        if (block.timestamp > _stoppedAt(k) + GRACE) return (0, SkipReason.WindowClosed);
        if (cumulativeAmount > k.limit) return (0, SkipReason.AboveLimit);
        if (cumulativeAmount <= k.settled) return (0, SkipReason.NothingToSettle);

        if (!_signedBy(sessionKey, voucherDigest(sessionKey, k.payee, cumulativeAmount), signature)) {
            return (0, SkipReason.InvalidSignature);
        }

        Tab storage tab = tabOf[k.owner][k.payee];
        uint256 tabWord;
        assembly ("memory-safe") {
            tabWord := sload(tab.slot)
        }
        // The tab's balance is the word's low 128 bits (truncating to them is the point).
        // forge-lint: disable-next-line(unsafe-typecast)
        uint256 balance = uint128(tabWord);
        if (balance == 0) return (0, SkipReason.EmptyTab);
        unchecked {
            paid = cumulativeAmount - k.settled; // > 0 and <= limit, checked above
            if (paid > balance) paid = balance; // a short tab pays what it holds
            // paid <= balance, a uint128; settled + paid <= cumulativeAmount <= limit, a uint128.
            // forge-lint: disable-next-line(unsafe-typecast)
            k.settled += uint128(paid);
        }
        SessionKey storage stored = _keys[sessionKey];
        uint256 limitAndSettled = (uint256(k.settled) << 128) | k.limit;
        assembly ("memory-safe") {
            // balance is the tab word's low 128 bits and paid <= balance: no borrow reaches the
            // pending withdrawal above it.
            sstore(tab.slot, sub(tabWord, paid))
            sstore(add(stored.slot, 2), limitAndSettled)
        }
        emit Settled(sessionKey, paid, k.settled);
    }

    /// @dev Whether `signature` (65 bytes r‖s‖v, read straight from calldata) is `signer`'s over
    ///      `digest`. OpenZeppelin's ECDSA refuses malleable (high-s) signatures.
    function _signedBy(address signer, bytes32 digest, bytes calldata signature) internal pure returns (bool) {
        if (signature.length != 65) return false;
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
            v := byte(0, calldataload(add(signature.offset, 0x40)))
        }
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, v, r, s);
        return err == ECDSA.RecoverError.NoError && recovered == signer;
    }

    /// @dev A key's three slots, one SLOAD each (copying the struct reads a packed slot once
    ///      per field). Layout as `SessionKey` declares it, low-order bits first.
    function _loadKey(address sessionKey) internal view returns (SessionKey memory k) {
        SessionKey storage stored = _keys[sessionKey];
        uint256 w0;
        uint256 w1;
        uint256 w2;
        assembly ("memory-safe") {
            w0 := sload(stored.slot)
            w1 := sload(add(stored.slot, 1))
            w2 := sload(add(stored.slot, 2))
        }
        // forge-lint: disable-start(unsafe-typecast)
        k.owner = address(uint160(w0));
        k.validAfter = uint48(w0 >> 160);
        k.validUntil = uint48(w0 >> 208);
        k.payee = address(uint160(w1));
        k.frozenAt = uint48(w1 >> 160);
        k.revokedAt = uint48(w1 >> 208);
        k.limit = uint128(w2);
        k.settled = uint128(w2 >> 128);
        // forge-lint: disable-end(unsafe-typecast)
    }

    /// @dev `settle`'s revert for a claim `_claim` refused, with the error's own details.
    function _revertFor(SkipReason reason, address sessionKey, SessionKey memory k, uint256 cumulativeAmount)
        internal
        view
    {
        if (reason == SkipReason.NotYetValid) revert KeyNotYetValid(sessionKey, k.validAfter);
        if (reason == SkipReason.WindowClosed) revert SettlementWindowClosed(sessionKey, _stoppedAt(k) + GRACE);
        if (reason == SkipReason.AboveLimit) revert VoucherAboveLimit(sessionKey, cumulativeAmount, k.limit);
        if (reason == SkipReason.NothingToSettle) revert NothingToSettle(sessionKey, cumulativeAmount, k.settled);
        if (reason == SkipReason.InvalidSignature) revert InvalidVoucherSignature(sessionKey);
        revert EmptyTab(k.owner, k.payee);
    }

    /// @dev When the key stopped being servable: the earliest of expiry, freeze and revocation.
    function _stoppedAt(SessionKey memory k) internal pure returns (uint256 stoppedAt) {
        stoppedAt = k.validUntil;
        if (k.frozenAt != 0 && k.frozenAt < stoppedAt) stoppedAt = k.frozenAt;
        if (k.revokedAt != 0 && k.revokedAt < stoppedAt) stoppedAt = k.revokedAt;
    }

    // ------------------------------------------------------------------- views

    /// @notice The stored state of `sessionKey` (all zero if it was never registered).
    function sessionKeyOf(address sessionKey) external view returns (SessionKey memory) {
        return _keys[sessionKey];
    }

    /// @notice The last moment a voucher of `sessionKey` can settle (0 if unknown).
    function settleableUntil(address sessionKey) external view returns (uint256) {
        SessionKey memory k = _keys[sessionKey];
        return k.owner == address(0) ? 0 : _stoppedAt(k) + GRACE;
    }

    /// @notice The EIP-712 domain separator of this deployment.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The digest a session key signs for a voucher.
    function voucherDigest(address sessionKey, address payee, uint256 cumulativeAmount)
        public
        view
        returns (bytes32 digest)
    {
        bytes32 typehash = VOUCHER_TYPEHASH;
        bytes32 structHash;
        // keccak256(abi.encode(VOUCHER_TYPEHASH, sessionKey, payee, cumulativeAmount)), hashed
        // in place at the free memory pointer without moving it: this runs on every settlement.
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mstore(add(m, 0x20), and(sessionKey, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(m, 0x40), and(payee, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(m, 0x60), cumulativeAmount)
            structHash := keccak256(m, 0x80)
        }
        digest = _hashTypedDataV4(structHash);
    }

    /// @notice The digest an owner signs to have `sessionKey` registered by a relayer.
    function registrationDigest(
        address owner,
        address sessionKey,
        address payee,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil,
        uint256 nonce,
        uint256 deadline
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(REGISTER_TYPEHASH, owner, sessionKey, payee, limit, validAfter, validUntil, nonce, deadline)
            )
        );
    }

    /// @notice The digest an owner signs to have all of `keys` registered by a relayer in one
    ///         transaction (EIP-712 `RegisterSessionKeys`).
    function registrationsDigest(address owner, KeyTerms[] calldata keys, uint256 nonce, uint256 deadline)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(REGISTER_BATCH_TYPEHASH, owner, _hashKeyTerms(keys), nonce, deadline))
        );
    }

    /// @dev EIP-712 `encodeData` of a `KeyTerms[]`: keccak256 of its entries' struct hashes,
    ///      concatenated. Hashed in place above the free memory pointer, which it leaves where it
    ///      was: one word per entry, where `abi.encode` would allocate seven and an array.
    function _hashKeyTerms(KeyTerms[] calldata keys) internal pure returns (bytes32 keysHash) {
        bytes32 typehash = KEY_TERMS_TYPEHASH;
        assembly ("memory-safe") {
            let n := keys.length
            let hashes := mload(0x40) // n struct hashes, then one entry's encoding
            let entry := add(hashes, shl(5, n))
            mstore(entry, typehash)
            let addressMask := 0xffffffffffffffffffffffffffffffffffffffff
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                // An entry is five words in calldata: sessionKey, payee, limit, validAfter,
                // validUntil. Each is masked to its type, so the digest covers exactly what
                // `_register` reads (the ABI decoder refuses dirty bits there anyway).
                let p := add(keys.offset, mul(i, 0xa0))
                mstore(add(entry, 0x20), and(calldataload(p), addressMask))
                mstore(add(entry, 0x40), and(calldataload(add(p, 0x20)), addressMask))
                mstore(add(entry, 0x60), and(calldataload(add(p, 0x40)), 0xffffffffffffffffffffffffffffffff))
                mstore(add(entry, 0x80), and(calldataload(add(p, 0x60)), 0xffffffffffff))
                mstore(add(entry, 0xa0), and(calldataload(add(p, 0x80)), 0xffffffffffff))
                mstore(add(hashes, shl(5, i)), keccak256(entry, 0xc0))
            }
            keysHash := keccak256(hashes, shl(5, n))
        }
    }

    /// @notice The digest an owner signs for a relayed freeze, unfreeze or revoke.
    function keyActionDigest(bytes32 typehash, address sessionKey, uint256 nonce, uint256 deadline)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(typehash, sessionKey, nonce, deadline)));
    }

    /// @notice The digest a payee signs to have a settler authorised (or stopped) by a relayer.
    function settlerDigest(address payee, address settler, bool allowed, uint256 nonce, uint256 deadline)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(SET_SETTLER_TYPEHASH, payee, settler, allowed, nonce, deadline)));
    }
}
