// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title SessionKeyValidator
/// @notice Escrow, session-key registry and voucher settlement for opentab.
/// @dev An owner deposits USDC and registers session keys, each with a spend limit, a validity
///      window and the single payee it may pay. The agent holding a key signs cumulative
///      vouchers (EIP-712 `Voucher`); anyone may settle the highest one, and the difference to
///      what was settled before moves from the owner's escrow to the key's payee.
///
///      A key stops being servable when it is frozen, revoked or expires. Vouchers it signed
///      before stay settleable for `GRACE` seconds after that moment, so nobody can freeze,
///      revoke or withdraw to dodge a bill; after it nothing settles (until an unfreeze).
///      Withdrawals wait `GRACE` for the same reason.
///
///      Payouts are pushed to the payee in the settling call, so the token balance of this
///      contract always equals the sum of all escrows.
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

    /// @notice A pending withdrawal: `amount` may leave at `readyAt`.
    struct Withdrawal {
        uint208 amount;
        uint48 readyAt;
    }

    /// @notice One voucher to settle in `settleBatch`.
    struct Claim {
        address sessionKey;
        uint256 cumulativeAmount;
        bytes signature;
    }

    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address sessionKey,address payee,uint256 cumulativeAmount)");
    bytes32 public constant REGISTER_TYPEHASH = keccak256(
        "RegisterSessionKey(address owner,address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant FREEZE_TYPEHASH =
        keccak256("FreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 public constant UNFREEZE_TYPEHASH =
        keccak256("UnfreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 public constant REVOKE_TYPEHASH =
        keccak256("RevokeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");

    /// @notice Bounds on `GRACE`, as x402's batch-settlement allows.
    uint256 public constant MIN_GRACE = 15 minutes;
    uint256 public constant MAX_GRACE = 30 days;

    /// @notice The token held in escrow.
    IERC20 public immutable USDC;
    /// @notice Seconds a payee keeps to settle after a key stops, and a withdrawal waits.
    uint256 public immutable GRACE;

    mapping(address sessionKey => SessionKey) internal _keys;
    /// @notice USDC base units each owner holds here, pending withdrawal included.
    mapping(address owner => uint256) public escrowOf;
    /// @notice Each owner's pending withdrawal, if any.
    mapping(address owner => Withdrawal) public withdrawalOf;
    /// @notice A service each owner lets freeze its keys (never unfreeze, never spend).
    mapping(address owner => address) public guardianOf;

    event Deposited(address indexed owner, uint256 amount);
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
    event Settled(
        address indexed owner, address indexed sessionKey, address indexed payee, uint256 amount, uint256 cumulativeAmount
    );
    event GuardianSet(address indexed owner, address indexed guardian);
    event WithdrawalRequested(address indexed owner, uint256 amount, uint48 readyAt);
    event WithdrawalCancelled(address indexed owner);
    event Withdrawn(address indexed owner, uint256 amount);

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
    error KeyFrozen(address sessionKey);
    error KeyNotFrozen(address sessionKey);
    error KeyRevoked(address sessionKey);
    error KeyNotYetValid(address sessionKey, uint48 validAfter);
    error SettlementWindowClosed(address sessionKey, uint256 closedAt);
    error SignatureExpired(uint256 deadline);
    error InvalidOwnerSignature(address owner);
    error InvalidVoucherSignature(address sessionKey);
    error VoucherAboveLimit(address sessionKey, uint256 cumulativeAmount, uint128 limit);
    error NothingToSettle(address sessionKey, uint256 cumulativeAmount, uint128 settled);
    error InsufficientEscrow(address owner, uint256 needed, uint256 available);
    error NoPendingWithdrawal(address owner);
    error WithdrawalNotReady(uint48 readyAt);
    error EmptyBatch();

    /// @param name EIP-712 domain name (opentab deploys with "opentab").
    /// @param version EIP-712 domain version (opentab deploys with "1").
    /// @param usdc The escrowed token.
    /// @param grace Settlement grace and withdrawal delay in seconds, 15 minutes to 30 days.
    constructor(string memory name, string memory version, IERC20 usdc, uint256 grace) EIP712(name, version) {
        if (address(usdc) == address(0)) revert ZeroAddress();
        if (grace < MIN_GRACE || grace > MAX_GRACE) revert GraceOutOfRange(grace);
        USDC = usdc;
        GRACE = grace;
    }

    // ------------------------------------------------------------------ escrow

    /// @notice Pulls `amount` USDC from the caller into its escrow (approve first).
    /// @dev Credits the balance actually received, so a fee-charging token cannot inflate escrow.
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 before = USDC.balanceOf(address(this));
        USDC.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = USDC.balanceOf(address(this)) - before;
        escrowOf[msg.sender] += received;
        emit Deposited(msg.sender, received);
    }

    /// @notice Asks to withdraw `amount`; it can leave after `GRACE`. Replaces any pending request.
    function requestWithdrawal(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 escrow = escrowOf[msg.sender];
        if (amount > escrow) revert InsufficientEscrow(msg.sender, amount, escrow);
        // Timestamps fit 48 bits for millions of years.
        // forge-lint: disable-next-line(unsafe-typecast)
        uint48 readyAt = uint48(block.timestamp + GRACE);
        // amount <= escrow <= token supply, which fits 208 bits for any real token.
        // forge-lint: disable-next-line(unsafe-typecast)
        withdrawalOf[msg.sender] = Withdrawal(uint208(amount), readyAt);
        emit WithdrawalRequested(msg.sender, amount, readyAt);
    }

    /// @notice Drops the caller's pending withdrawal.
    function cancelWithdrawal() external {
        if (withdrawalOf[msg.sender].amount == 0) revert NoPendingWithdrawal(msg.sender);
        delete withdrawalOf[msg.sender];
        emit WithdrawalCancelled(msg.sender);
    }

    /// @notice Completes the caller's withdrawal once ready. Pays what is left of the requested
    ///         amount after settlements made during the wait.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Withdrawal memory w = withdrawalOf[msg.sender];
        if (w.amount == 0) revert NoPendingWithdrawal(msg.sender);
        if (block.timestamp < w.readyAt) revert WithdrawalNotReady(w.readyAt);
        delete withdrawalOf[msg.sender];
        uint256 escrow = escrowOf[msg.sender];
        amount = w.amount < escrow ? w.amount : escrow;
        escrowOf[msg.sender] = escrow - amount;
        emit Withdrawn(msg.sender, amount);
        if (amount != 0) USDC.safeTransfer(msg.sender, amount);
    }

    /// @notice Lets `guardian` freeze the caller's keys (address(0) removes it).
    function setGuardian(address guardian) external {
        guardianOf[msg.sender] = guardian;
        emit GuardianSet(msg.sender, guardian);
    }

    // ------------------------------------------------------------ registration

    /// @notice Registers `sessionKey` for the caller.
    function registerSessionKey(address sessionKey, address payee, uint128 limit, uint48 validAfter, uint48 validUntil)
        external
    {
        _register(msg.sender, sessionKey, payee, limit, validAfter, validUntil);
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

    function _register(
        address owner,
        address sessionKey,
        address payee,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil
    ) internal {
        if (sessionKey == address(0) || payee == address(0)) revert ZeroAddress();
        // Paying the validator itself would strand tokens no escrow accounts for.
        if (payee == address(this)) revert InvalidPayee(payee);
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

    /// @notice Pays `cumulativeAmount` minus what was settled before from the owner's escrow to
    ///         the key's payee. Anyone may call it; the money only ever goes to the payee.
    /// @return paid The amount moved by this call.
    function settle(address sessionKey, uint256 cumulativeAmount, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 paid)
    {
        address payee = _keys[sessionKey].payee;
        paid = _claim(sessionKey, payee, cumulativeAmount, signature);
        USDC.safeTransfer(payee, paid);
    }

    /// @notice Settles several vouchers in one transaction; all or nothing. Consecutive claims
    ///         for the same payee are paid in one transfer.
    /// @return total The amount moved by this call.
    function settleBatch(Claim[] calldata claims) external nonReentrant returns (uint256 total) {
        uint256 n = claims.length;
        if (n == 0) revert EmptyBatch();
        address payee;
        uint256 owed;
        for (uint256 i; i < n; ++i) {
            Claim calldata c = claims[i];
            address next = _keys[c.sessionKey].payee;
            if (next != payee) {
                if (owed != 0) USDC.safeTransfer(payee, owed);
                (payee, owed) = (next, 0);
            }
            uint256 paid = _claim(c.sessionKey, next, c.cumulativeAmount, c.signature);
            owed += paid;
            total += paid;
        }
        USDC.safeTransfer(payee, owed);
    }

    /// @dev Checks one voucher and books it: escrow down, `settled` up. The caller transfers.
    function _claim(address sessionKey, address payee, uint256 cumulativeAmount, bytes calldata signature)
        internal
        returns (uint256 amount)
    {
        SessionKey memory k = _keys[sessionKey];
        if (k.owner == address(0)) revert UnknownSessionKey(sessionKey);
        if (block.timestamp < k.validAfter) revert KeyNotYetValid(sessionKey, k.validAfter);
        uint256 closesAt = _stoppedAt(k) + GRACE;
        if (block.timestamp > closesAt) revert SettlementWindowClosed(sessionKey, closesAt);
        if (cumulativeAmount > k.limit) revert VoucherAboveLimit(sessionKey, cumulativeAmount, k.limit);
        if (cumulativeAmount <= k.settled) revert NothingToSettle(sessionKey, cumulativeAmount, k.settled);

        // OpenZeppelin's ECDSA refuses malleable (high-s) signatures.
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(voucherDigest(sessionKey, payee, cumulativeAmount), signature);
        if (err != ECDSA.RecoverError.NoError || signer != sessionKey) revert InvalidVoucherSignature(sessionKey);

        unchecked {
            amount = cumulativeAmount - k.settled; // > 0 and <= limit, checked above
        }
        uint256 escrow = escrowOf[k.owner];
        if (escrow < amount) revert InsufficientEscrow(k.owner, amount, escrow);
        unchecked {
            escrowOf[k.owner] = escrow - amount;
        }
        // cumulativeAmount <= limit, a uint128.
        // forge-lint: disable-next-line(unsafe-typecast)
        _keys[sessionKey].settled = uint128(cumulativeAmount);
        emit Settled(k.owner, sessionKey, payee, amount, cumulativeAmount);
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
    function voucherDigest(address sessionKey, address payee, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, sessionKey, payee, cumulativeAmount)));
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

    /// @notice The digest an owner signs for a relayed freeze, unfreeze or revoke.
    function keyActionDigest(bytes32 typehash, address sessionKey, uint256 nonce, uint256 deadline)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(typehash, sessionKey, nonce, deadline)));
    }
}
