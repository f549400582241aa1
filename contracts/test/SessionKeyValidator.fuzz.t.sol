// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {ValidatorFixture} from "./utils/Fixture.sol";
import {Digests} from "./utils/Digests.sol";
import {FeeOnTransferToken} from "./utils/Mocks.sol";

/// @notice Property tests over amounts, windows, times and keys (1,000 runs each by default).
contract SessionKeyValidatorFuzzTest is ValidatorFixture {
    // ------------------------------------------------------------ amounts

    /// A run of vouchers in any order: each settle pays exactly the delta over what was
    /// settled, and the payee never gets more than the highest voucher, the limit or the escrow.
    function testFuzz_settle_paysExactlyTheDeltas(uint128 limit, uint256 deposited, uint256[6] memory amounts)
        public
    {
        limit = uint128(bound(limit, 1, 1e12));
        deposited = bound(deposited, 1, 2e12);
        _deposit(owner, deposited);
        _register(owner, key, payee, limit);

        uint256 settled;
        uint256 highest;
        for (uint256 i; i < amounts.length; ++i) {
            uint256 a = bound(amounts[i], 0, uint256(limit) + limit / 2 + 1);
            if (a > highest) highest = a;
            bytes memory sig = _voucher(KEY_PK, payee, a);
            uint256 escrow = deposited - settled;
            if (a > limit) {
                vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, a, limit));
                validator.settle(key, a, sig);
            } else if (a <= settled) {
                vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, a, settled));
                validator.settle(key, a, sig);
            } else if (a - settled > escrow) {
                vm.expectRevert(
                    abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, a - settled, escrow)
                );
                validator.settle(key, a, sig);
            } else {
                uint256 paid = validator.settle(key, a, sig);
                vm.assertEq(paid, a - settled, "pays the delta");
                settled = a;
            }
            vm.assertEq(usdc.balanceOf(payee), settled, "payee holds exactly what was settled");
            vm.assertEq(_settled(key), settled, "settled on chain");
        }
        vm.assertLe(usdc.balanceOf(payee), highest, "never above the highest voucher");
        vm.assertLe(usdc.balanceOf(payee), limit, "never above the limit");
        vm.assertLe(usdc.balanceOf(payee), deposited, "never above the escrow");
        vm.assertEq(validator.escrowOf(owner) + usdc.balanceOf(payee), deposited, "conserved");
        vm.assertEq(usdc.balanceOf(address(validator)), validator.escrowOf(owner), "balance equals escrow");
    }

    /// A batch pays the same as settling its claims one by one, whatever the payee mix.
    function testFuzz_settleBatch_paysTheSumOfTheDeltas(uint256[4] memory amounts, uint8 payeeBits) public {
        _deposit(owner, 1_000 * USDC_1);
        uint256[4] memory pks = [KEY_PK, KEY2_PK, KEY3_PK, uint256(0xBEEF04)];
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](4);
        uint256 toPayee;
        uint256 toPayee2;
        for (uint256 i; i < 4; ++i) {
            address to = (payeeBits >> i) & 1 == 1 ? payee2 : payee;
            address k = vm.addr(pks[i]);
            _register(owner, k, to, LIMIT);
            uint256 a = bound(amounts[i], 1, LIMIT);
            claims[i] = SessionKeyValidator.Claim(k, a, _voucher(pks[i], to, a));
            if (to == payee) toPayee += a;
            else toPayee2 += a;
        }
        uint256 total = validator.settleBatch(claims);
        vm.assertEq(total, toPayee + toPayee2, "total");
        vm.assertEq(usdc.balanceOf(payee), toPayee, "payee");
        vm.assertEq(usdc.balanceOf(payee2), toPayee2, "payee2");
        vm.assertEq(validator.escrowOf(owner), 1_000 * USDC_1 - total, "escrow");
    }

    /// Deposits credit what arrived, whatever the token's transfer fee.
    function testFuzz_deposit_creditsWhatArrives(uint256 amount, uint256 feeBps) public {
        amount = bound(amount, 1, 1e30);
        feeBps = bound(feeBps, 0, 9_999);
        FeeOnTransferToken token = new FeeOnTransferToken(feeBps);
        SessionKeyValidator v = new SessionKeyValidator(NAME, VERSION, IERC20(address(token)), GRACE);
        token.mint(owner, amount);
        vm.startPrank(owner);
        token.approve(address(v), amount);
        v.deposit(amount);
        vm.stopPrank();
        uint256 received = amount - amount * feeBps / 10_000;
        vm.assertEq(v.escrowOf(owner), received, "escrow is what arrived");
        vm.assertEq(token.balanceOf(address(v)), v.escrowOf(owner), "balance equals escrow");
    }

    // ------------------------------------------------------------ windows

    /// Registration accepts exactly the windows that are non-empty and not over yet.
    function testFuzz_registerSessionKey_validatesTheWindow(uint48 validAfter, uint48 validUntil, uint48 nowTs)
        public
    {
        nowTs = u48(bound(nowTs, 1, type(uint48).max));
        vm.warp(nowTs);
        if (validAfter >= validUntil) {
            vm.expectRevert(
                abi.encodeWithSelector(SessionKeyValidator.InvalidValidityWindow.selector, validAfter, validUntil)
            );
        } else if (validUntil <= nowTs) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.AlreadyExpired.selector, validUntil));
        } else {
            vm.expectEmit(true, true, true, true, address(validator));
            emit SessionKeyValidator.SessionKeyRegistered(owner, key, payee, LIMIT, validAfter, validUntil);
        }
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, validAfter, validUntil);
        bool registered = validAfter < validUntil && validUntil > nowTs;
        vm.assertEq(validator.sessionKeyOf(key).owner, registered ? owner : address(0), "stored iff valid");
        if (registered) vm.assertEq(validator.sessionKeyOf(key).validUntil, validUntil, "validUntil");
    }

    /// Before validAfter nothing settles; from validAfter on it does.
    function testFuzz_settle_nothingBeforeValidAfter(uint256 start, uint256 at) public {
        _deposit(owner, 10 * USDC_1);
        start = bound(start, 1, 365 days);
        uint48 validAfter = u48(T0 + start);
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, validAfter, u48(T0 + 3 * start));
        at = bound(at, T0, T0 + 2 * start);
        vm.warp(at);
        bytes memory sig = _voucher(KEY_PK, payee, 1);
        if (at < validAfter) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyNotYetValid.selector, key, validAfter));
        }
        validator.settle(key, 1, sig);
        vm.assertEq(usdc.balanceOf(payee), at < validAfter ? 0 : 1, "paid iff at or after validAfter");
    }

    /// After a freeze, a revocation or expiry at `stop`, a voucher settles at `stop + d` iff
    /// `d <= GRACE`, for any GRACE the constructor accepts.
    function testFuzz_settle_onlyWithinGraceOfTheStop(uint256 grace, uint256 d, uint8 how) public {
        grace = bound(grace, 15 minutes, 30 days);
        d = bound(d, 0, 3 * grace);
        SessionKeyValidator v = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), grace);
        usdc.mint(owner, 10 * USDC_1);
        vm.startPrank(owner);
        usdc.approve(address(v), 10 * USDC_1);
        v.deposit(10 * USDC_1);
        v.registerSessionKey(key, payee, LIMIT, u48(T0), u48(T0 + 7 days));
        uint256 stop;
        if (how % 3 == 0) {
            vm.warp(T0 + 1 hours);
            v.freeze(key);
            stop = T0 + 1 hours;
        } else if (how % 3 == 1) {
            vm.warp(T0 + 2 hours);
            v.revoke(key);
            stop = T0 + 2 hours;
        } else {
            stop = T0 + 7 days; // expiry
        }
        vm.stopPrank();
        vm.assertEq(v.settleableUntil(key), stop + grace, "settleableUntil");

        vm.warp(stop + d);
        bytes memory sig = _sign(KEY_PK, Digests.voucher(_separator(address(v)), key, payee, 5));
        if (d > grace) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, stop + grace));
        }
        v.settle(key, 5, sig);
        vm.assertEq(usdc.balanceOf(payee), d <= grace ? 5 : 0, "paid iff within grace");
    }

    // -------------------------------------------------------- withdrawals

    /// A withdrawal never leaves before GRACE, never takes what a payee settled in the
    /// meantime, and tokens are conserved across owner, payee and contract.
    function testFuzz_withdraw_neverBeforeGraceNorAheadOfPayee(
        uint256 deposited,
        uint256 requested,
        uint256 voucher,
        uint256 settleDelay,
        uint256 withdrawDelay
    ) public {
        deposited = bound(deposited, 1, 1e13);
        requested = bound(requested, 1, deposited);
        voucher = bound(voucher, 1, 2e13);
        settleDelay = bound(settleDelay, 0, GRACE);
        withdrawDelay = bound(withdrawDelay, settleDelay, 2 * GRACE);
        _deposit(owner, deposited);
        _register(owner, key, payee, type(uint128).max);
        vm.prank(owner);
        validator.requestWithdrawal(requested);

        vm.warp(T0 + settleDelay);
        bytes memory sig = _voucher(KEY_PK, payee, voucher);
        uint256 paid;
        if (voucher > deposited) {
            vm.expectRevert(
                abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, voucher, deposited)
            );
            validator.settle(key, voucher, sig);
        } else {
            paid = validator.settle(key, voucher, sig);
        }

        vm.warp(T0 + withdrawDelay);
        uint256 out;
        if (withdrawDelay < GRACE) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + GRACE)));
            vm.prank(owner);
            validator.withdraw();
        } else {
            vm.prank(owner);
            out = validator.withdraw();
            uint256 left = deposited - paid;
            vm.assertEq(out, requested < left ? requested : left, "owner gets min(requested, what is left)");
        }
        vm.assertEq(usdc.balanceOf(payee), paid, "payee keeps its settlement");
        vm.assertEq(usdc.balanceOf(owner), out, "owner balance");
        vm.assertEq(usdc.balanceOf(address(validator)), validator.escrowOf(owner), "balance equals escrow");
        vm.assertEq(paid + out + validator.escrowOf(owner), deposited, "conserved");
    }

    // --------------------------------------------------------- signatures

    /// A voucher signed by any private key other than the session key's is refused.
    function testFuzz_settle_refusesAnyOtherSigner(uint256 pk, uint256 amount) public {
        pk = bound(pk, 1, Digests.SECP256K1_N - 1);
        vm.assume(pk != KEY_PK);
        amount = bound(amount, 1, LIMIT);
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, amount, _voucher(pk, key, payee, amount));
        vm.assertEq(_settled(key), 0, "nothing settled");
        vm.assertEq(usdc.balanceOf(payee), 0, "nothing paid");
    }

    /// A registration signed by any private key other than the owner's is refused.
    function testFuzz_registerSessionKeyWithSig_refusesAnyOtherSigner(uint256 pk, uint128 limit) public {
        pk = bound(pk, 1, Digests.SECP256K1_N - 1);
        vm.assume(pk != OWNER_PK);
        limit = uint128(bound(limit, 1, type(uint128).max));
        bytes memory sig = _sign(
            pk,
            Digests.registration(
                _separator(address(validator)), owner, key, payee, limit, 0, u48(T0 + 1 days), 0, T0
            )
        );
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key, payee, limit, 0, u48(T0 + 1 days), owner, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).owner, address(0), "nothing registered");
    }

    /// A voucher is bound to its chain: on any other chain id it is refused.
    function testFuzz_settle_refusedOnAnyOtherChain(uint64 chainId, uint256 amount) public {
        vm.assume(chainId != block.chainid);
        amount = bound(amount, 1, LIMIT);
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, amount);
        vm.chainId(chainId);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, amount, sig);
        vm.assertEq(usdc.balanceOf(payee), 0, "nothing paid");
    }

    /// The contract's voucher digest is the EIP-712 digest for any key, payee, amount and chain.
    function testFuzz_voucherDigest_matchesIndependentEip712(
        address sessionKey,
        address to,
        uint256 amount,
        uint64 chainId
    ) public {
        vm.chainId(chainId);
        vm.assertEq(
            validator.voucherDigest(sessionKey, to, amount),
            Digests.voucher(Digests.domainSeparator(NAME, VERSION, chainId, address(validator)), sessionKey, to, amount),
            "digest"
        );
    }
}
