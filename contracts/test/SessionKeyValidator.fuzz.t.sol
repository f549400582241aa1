// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {ValidatorFixture} from "./utils/Fixture.sol";
import {Digests} from "./utils/Digests.sol";
import {FeeOnTransferToken} from "./utils/Mocks.sol";

/// @notice Property tests over amounts, windows, times and keys (1,000 runs each by default).
contract SessionKeyValidatorFuzzTest is ValidatorFixture {
    function setUp() public override {
        super.setUp();
        // The fixture's relayer settles for both payees, as their settlement worker.
        _allowRelayer(payee);
        _allowRelayer(payee2);
    }

    // ------------------------------------------------------------ amounts

    /// A run of vouchers in any order, with top-ups in between: each settle pays the delta over
    /// what was settled, or what the tab holds if that is less, and `settled` advances by what
    /// was paid. The payee never gets more than the highest voucher, the limit or the deposits.
    function testFuzz_settle_paysTheDeltaUpToTheTab(
        uint128 limit,
        uint256 deposited,
        uint256[6] memory amounts,
        uint64[6] memory topUps
    ) public {
        limit = uint128(bound(limit, 1, 1e12));
        deposited = bound(deposited, 1, 2e12);
        _deposit(owner, deposited);
        _register(owner, key, payee, limit);

        uint256 settled;
        uint256 tab = deposited;
        uint256 highest;
        for (uint256 i; i < amounts.length; ++i) {
            uint256 a = bound(amounts[i], 0, uint256(limit) + limit / 2 + 1);
            if (a > highest) highest = a;
            bytes memory sig = _voucher(KEY_PK, payee, a);
            if (a > limit) {
                vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, a, limit));
                _settle(key, a, sig);
            } else if (a <= settled) {
                vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, a, settled));
                _settle(key, a, sig);
            } else if (tab == 0) {
                vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, owner, payee));
                _settle(key, a, sig);
            } else {
                uint256 expected = a - settled < tab ? a - settled : tab;
                vm.expectEmit(true, true, true, true, address(validator));
                emit SessionKeyValidator.Settled(key, expected, settled + expected);
                uint256 paid = _settle(key, a, sig);
                vm.assertEq(paid, expected, "pays min(delta, tab)");
                settled += paid;
                tab -= paid;
            }
            vm.assertEq(usdc.balanceOf(payee), settled, "payee holds exactly what was settled");
            vm.assertEq(_settled(key), settled, "settled on chain");
            vm.assertEq(_tab(owner, payee), tab, "tab on chain");
            // Sometimes the owner tops the tab up.
            uint256 topUp = bound(topUps[i], 0, limit);
            if (topUp != 0 && topUps[i] % 3 == 0) {
                _deposit(owner, topUp);
                deposited += topUp;
                tab += topUp;
            }
        }
        vm.assertLe(usdc.balanceOf(payee), highest, "never above the highest voucher");
        vm.assertLe(usdc.balanceOf(payee), limit, "never above the limit");
        vm.assertLe(usdc.balanceOf(payee), deposited, "never above the deposits");
        vm.assertEq(_tab(owner, payee) + usdc.balanceOf(payee), deposited, "conserved");
        vm.assertEq(usdc.balanceOf(address(validator)), _tab(owner, payee), "balance equals the tab");
    }

    /// A batch pays what settling its claims one by one would, in order, from a tab that may
    /// run short; claims of keys for another payee are skipped and leave that tab alone.
    function testFuzz_settleBatch_paysTheClaimsInOrderUpToTheTab(
        uint256[4] memory amounts,
        uint8 payeeBits,
        uint256 deposited
    ) public {
        deposited = bound(deposited, 1, 4 * uint256(LIMIT));
        _deposit(owner, payee, deposited);
        _deposit(owner, payee2, 1_000 * USDC_1);
        uint256[4] memory pks = [KEY_PK, KEY2_PK, KEY3_PK, uint256(0xBEEF04)];
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](4);
        uint256[4] memory expectedPaid;
        SessionKeyValidator.SkipReason[4] memory skip;
        uint256 tab = deposited;
        uint256 total;
        for (uint256 i; i < 4; ++i) {
            address to = (payeeBits >> i) & 1 == 1 ? payee2 : payee;
            address k = vm.addr(pks[i]);
            _register(owner, k, to, LIMIT);
            uint256 a = bound(amounts[i], 1, LIMIT);
            claims[i] = SessionKeyValidator.Claim(k, a, _voucher(pks[i], to, a));
            if (to == payee2) {
                skip[i] = SessionKeyValidator.SkipReason.WrongPayee;
            } else if (tab == 0) {
                skip[i] = SessionKeyValidator.SkipReason.EmptyTab;
            } else {
                expectedPaid[i] = a < tab ? a : tab;
                tab -= expectedPaid[i];
                total += expectedPaid[i];
            }
        }
        for (uint256 i; i < 4; ++i) {
            vm.expectEmit(true, true, true, true, address(validator));
            if (skip[i] == SessionKeyValidator.SkipReason.None) {
                emit SessionKeyValidator.Settled(claims[i].sessionKey, expectedPaid[i], expectedPaid[i]);
            } else {
                emit SessionKeyValidator.ClaimSkipped(claims[i].sessionKey, skip[i]);
            }
        }
        vm.prank(relayer);
        uint256 got = validator.settleBatch(payee, claims);
        vm.assertEq(got, total, "total");
        for (uint256 i; i < 4; ++i) {
            vm.assertEq(_settled(vm.addr(pks[i])), expectedPaid[i], "each key settled what it was paid");
        }
        vm.assertEq(usdc.balanceOf(payee), total, "payee");
        vm.assertEq(usdc.balanceOf(payee2), 0, "payee2 is not paid through payee's batch");
        vm.assertEq(_tab(owner, payee), deposited - total, "tab");
        vm.assertEq(_tab(owner, payee2), 1_000 * USDC_1, "the other tab is untouched");
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
        v.deposit(payee, amount);
        vm.stopPrank();
        uint256 received = amount - amount * feeBps / 10_000;
        (uint128 tab,,) = v.tabOf(owner, payee);
        vm.assertEq(tab, received, "tab is what arrived");
        vm.assertEq(token.balanceOf(address(v)), tab, "balance equals the tab");
    }

    // ------------------------------------------------------------- tabs

    /// A key draws only on its owner's tab with its payee: the same owner's tab with another
    /// payee and another owner's tab with the same payee never move.
    function testFuzz_settle_drawsOnlyOnItsOwnTab(uint256[3] memory deposits, uint256 amount) public {
        uint256 mine = bound(deposits[0], 1, 2 * uint256(LIMIT));
        uint256 otherPayee = bound(deposits[1], 1, 1e15);
        uint256 otherOwner = bound(deposits[2], 1, 1e15);
        amount = bound(amount, 1, LIMIT);
        _deposit(owner, payee, mine);
        _deposit(owner, payee2, otherPayee);
        _deposit(stranger, payee, otherOwner);
        _register(owner, key, payee, LIMIT);
        uint256 paid = _settle(key, amount, _voucher(KEY_PK, payee, amount));
        vm.assertEq(paid, amount < mine ? amount : mine, "min(voucher, own tab)");
        vm.assertEq(_tab(owner, payee), mine - paid, "own tab");
        vm.assertEq(_tab(owner, payee2), otherPayee, "same owner, other payee");
        vm.assertEq(_tab(stranger, payee), otherOwner, "other owner, same payee");
    }

    // ---------------------------------------------------------- settlers

    /// Settlement, single or batched, is refused to everyone but the payee and its settlers.
    function testFuzz_settle_onlyByThePayeeOrItsSettlers(address caller, uint8 pick, bool batch) public {
        vm.assume(caller != address(vm));
        if (pick % 4 == 0) caller = payee;
        else if (pick % 4 == 1) caller = relayer;
        bool allowed = caller == payee || caller == relayer;
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 3 * USDC_1);
        if (!allowed) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, caller));
        }
        vm.prank(caller);
        if (batch) {
            SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
            claims[0] = SessionKeyValidator.Claim(key, 3 * USDC_1, sig);
            validator.settleBatch(payee, claims);
        } else {
            validator.settle(key, 3 * USDC_1, sig);
        }
        vm.assertEq(usdc.balanceOf(payee), allowed ? 3 * USDC_1 : 0, "paid iff sent by the payee or its settler");
    }

    /// A SetSettler signed by any private key other than the payee's is refused.
    function testFuzz_setSettlerWithSig_refusesAnyOtherSigner(uint256 pk, address settler, bool allowed) public {
        uint256 payeePk = 0xC01D;
        address signingPayee = vm.addr(payeePk);
        pk = bound(pk, 1, Digests.SECP256K1_N - 1);
        vm.assume(pk != payeePk && settler != address(0));
        bytes memory sig =
            _sign(pk, Digests.setSettler(_separator(address(validator)), signingPayee, settler, allowed, 0, T0));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayeeSignature.selector, signingPayee));
        validator.setSettlerWithSig(signingPayee, settler, allowed, 0, T0, sig);
        vm.assertFalse(validator.isSettler(signingPayee, settler), "not authorised");
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
        _settle(key, 1, sig);
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
        v.deposit(payee, 10 * USDC_1);
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
        vm.prank(payee);
        v.settle(key, 5, sig);
        vm.assertEq(usdc.balanceOf(payee), d <= grace ? 5 : 0, "paid iff within grace");
    }

    // -------------------------------------------------------- withdrawals

    /// A withdrawal never leaves up to and including graceEndsAt, never takes what a payee
    /// settled in the meantime (in full or partly), and tokens are conserved across owner,
    /// payee and contract.
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
        validator.requestWithdrawal(payee, requested);

        vm.warp(T0 + settleDelay);
        uint256 paid = _settle(key, voucher, _voucher(KEY_PK, payee, voucher));
        vm.assertEq(paid, voucher < deposited ? voucher : deposited, "the payee settles first, up to the tab");

        vm.warp(T0 + withdrawDelay);
        uint256 out;
        if (withdrawDelay <= GRACE) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + GRACE)));
            vm.prank(owner);
            validator.withdraw(payee);
        } else {
            vm.prank(owner);
            out = validator.withdraw(payee);
            uint256 left = deposited - paid;
            vm.assertEq(out, requested < left ? requested : left, "owner gets min(requested, what is left)");
        }
        vm.assertEq(usdc.balanceOf(payee), paid, "payee keeps its settlement");
        vm.assertEq(usdc.balanceOf(owner), out, "owner balance");
        vm.assertEq(usdc.balanceOf(address(validator)), _tab(owner, payee), "balance equals the tab");
        vm.assertEq(paid + out + _tab(owner, payee), deposited, "conserved");
    }

    /// A key frozen when its owner asks to withdraw: at any second after that, exactly one of
    /// "the payee settles" and "the owner withdraws" is possible, for any GRACE.
    function testFuzz_settleAndWithdraw_windowsAreDisjoint(uint256 grace, uint256 d) public {
        grace = bound(grace, 15 minutes, 30 days);
        d = bound(d, 0, 3 * grace);
        SessionKeyValidator v = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), grace);
        usdc.mint(owner, 10 * USDC_1);
        vm.startPrank(owner);
        usdc.approve(address(v), 10 * USDC_1);
        v.deposit(payee, 10 * USDC_1);
        v.registerSessionKey(key, payee, LIMIT, u48(T0), u48(T0 + 60 days));
        v.freeze(key);
        v.requestWithdrawal(payee, 10 * USDC_1);
        vm.stopPrank();

        vm.warp(T0 + d);
        bytes memory sig = _sign(KEY_PK, Digests.voucher(_separator(address(v)), key, payee, 4 * USDC_1));
        vm.prank(payee);
        (bool settled,) = address(v).call(abi.encodeCall(v.settle, (key, 4 * USDC_1, sig)));
        vm.prank(owner);
        (bool withdrew,) = address(v).call(abi.encodeCall(v.withdraw, (payee)));
        vm.assertEq(settled, d <= grace, "settles up to and including the last second of grace");
        vm.assertEq(withdrew, d > grace, "withdraws only strictly after it");
        vm.assertEq(usdc.balanceOf(payee) + usdc.balanceOf(owner), 10 * USDC_1 - (settled ? 6 * USDC_1 : 0), "paid");
    }

    // --------------------------------------------------------- signatures

    /// A voucher signed by any private key other than the session key's is refused.
    function testFuzz_settle_refusesAnyOtherSigner(uint256 pk, uint256 amount) public {
        pk = bound(pk, 1, Digests.SECP256K1_N - 1);
        vm.assume(pk != KEY_PK);
        amount = bound(amount, 1, LIMIT);
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, amount, _voucher(pk, key, payee, amount));
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
        _settle(key, amount, sig);
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
