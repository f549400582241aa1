/**
 * The few contract calls the UI sends itself (the owner's wallet pays the gas): USDC's approve
 * and the validator's tab functions. Every custom error of both contracts is listed so a revert
 * decodes to its name (a deposit's `transferFrom` can bubble up USDC's own errors).
 * `test/contracts.test.ts` checks these fragments against `contracts/artifacts/`.
 */

import { parseAbi } from "viem";

/** OpenZeppelin's ERC-20 errors (USDC's; a deposit's `transferFrom` bubbles them up). */
const erc20Errors = [
  "error ERC20InsufficientAllowance(address spender, uint256 allowance, uint256 needed)",
  "error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed)",
  "error ERC20InvalidApprover(address approver)",
  "error ERC20InvalidReceiver(address receiver)",
  "error ERC20InvalidSender(address sender)",
  "error ERC20InvalidSpender(address spender)",
] as const;

/** USDC (6 decimals). */
export const erc20Abi = parseAbi([
  "function approve(address spender, uint256 value) returns (bool)",
  "function allowance(address owner, address spender) view returns (uint256)",
  "function balanceOf(address account) view returns (uint256)",
  ...erc20Errors,
]);

/** `SessionKeyValidator`: the tab functions, and every error it (or USDC under it) reverts with. */
export const validatorAbi = parseAbi([
  "function deposit(address payee, uint256 amount)",
  "function requestWithdrawal(address payee, uint256 amount)",
  "function cancelWithdrawal(address payee)",
  "function withdraw(address payee) returns (uint256 amount)",
  "function tabOf(address owner, address payee) view returns (uint128 balance, uint80 withdrawing, uint48 graceEndsAt)",
  "error AlreadyExpired(uint48 validUntil)",
  "error EmptyBatch()",
  "error EmptyTab(address owner, address payee)",
  "error GraceOutOfRange(uint256 grace)",
  "error InsufficientTab(address owner, address payee, uint256 needed, uint256 available)",
  "error InvalidAccountNonce(address account, uint256 currentNonce)",
  "error InvalidOwnerSignature(address owner)",
  "error InvalidPayeeSignature(address payee)",
  "error InvalidPayee(address payee)",
  "error InvalidShortString()",
  "error InvalidValidityWindow(uint48 validAfter, uint48 validUntil)",
  "error InvalidVoucherSignature(address sessionKey)",
  "error KeyFrozen(address sessionKey)",
  "error KeyNotFrozen(address sessionKey)",
  "error KeyNotYetValid(address sessionKey, uint48 validAfter)",
  "error KeyRevoked(address sessionKey)",
  "error NoPendingWithdrawal(address owner, address payee)",
  "error NotKeyOwner(address sessionKey, address caller)",
  "error NotOwnerOrGuardian(address sessionKey, address caller)",
  "error NotSettler(address payee, address caller)",
  "error NothingToSettle(address sessionKey, uint256 cumulativeAmount, uint128 settled)",
  "error ReentrancyGuardReentrantCall()",
  "error SafeCastOverflowedUintDowncast(uint8 bits, uint256 value)",
  "error SafeERC20FailedOperation(address token)",
  "error SessionKeyExists(address sessionKey)",
  "error SettlementWindowClosed(address sessionKey, uint256 closedAt)",
  "error SignatureExpired(uint256 deadline)",
  "error StringTooLong(string str)",
  "error UnknownSessionKey(address sessionKey)",
  "error VoucherAboveLimit(address sessionKey, uint256 cumulativeAmount, uint128 limit)",
  "error WithdrawalNotReady(uint48 graceEndsAt)",
  "error ZeroAddress()",
  "error ZeroAmount()",
  "error ZeroLimit()",
  ...erc20Errors,
]);
