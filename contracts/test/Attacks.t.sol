// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {ValidatorFixture} from "./utils/Fixture.sol";
import {Digests} from "./utils/Digests.sol";

/// @notice One named regression test per attack on vouchers, signatures, settlers, tabs and
///         the grace rules, and one per finding of issue 8 (at the end).
contract AttacksTest is ValidatorFixture {
    function setUp() public override {
        super.setUp();
        _fundAndRegister(); // owner: a 1,000 USDC tab with payee; key -> payee, limit 100 USDC
        // The relayer is the payees' settlement worker.
        _allowRelayer(payee);
        _allowRelayer(payee2);
    }

    // ============================================================== replays

    function test_attack_voucherReplayOnAnotherChainIsRefused() public {
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1); // signed on chain 31337
        vm.chainId(137); // the same contract address on a fork / another chain
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 10 * USDC_1, sig);

        vm.chainId(31337); // back home it is good
        _settle(key, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once, on its own chain");
    }

    function test_attack_voucherReplayOnAnotherDeploymentIsRefused() public {
        SessionKeyValidator other = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), GRACE);
        usdc.mint(owner, 1_000 * USDC_1);
        vm.startPrank(owner);
        usdc.approve(address(other), 1_000 * USDC_1);
        other.deposit(payee, 1_000 * USDC_1);
        other.registerSessionKey(key, payee, LIMIT, u48(T0), u48(T0 + LIFETIME));
        vm.stopPrank();
        vm.prank(payee);
        other.setSettler(relayer, true);

        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1); // for `validator`
        _settle(key, 10 * USDC_1, sig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        vm.prank(relayer);
        other.settle(key, 10 * USDC_1, sig);

        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once");
        (uint128 otherTab,,) = other.tabOf(owner, payee);
        vm.assertEq(otherTab, 1_000 * USDC_1, "other deployment's tab untouched");
        vm.assertEq(other.sessionKeyOf(key).settled, 0, "nothing settled there");
    }

    function test_attack_voucherReplayForAnotherKeyIsRefused() public {
        _register(owner, key2, payee, LIMIT);
        // key's own voucher, submitted as key2's.
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key2));
        _settle(key2, 10 * USDC_1, sig);
        // key signing a voucher that names key2 does not help either: key2 did not sign it.
        bytes memory forged = _voucher(KEY_PK, key2, payee, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key2));
        _settle(key2, 10 * USDC_1, forged);
        vm.assertEq(_settled(key2), 0, "key2 settled nothing");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee got nothing");
    }

    function test_attack_voucherForAnotherPayeeIsRefused() public {
        // The agent is tricked into signing for payee2; key may only ever pay `payee`.
        bytes memory sig = _voucher(KEY_PK, payee2, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee2), 0, "payee2 got nothing");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee got nothing");
        vm.assertEq(_settled(key), 0, "nothing settled");
    }

    function test_attack_voucherForAPayeeOfAnotherKeyIsRefused() public {
        _deposit(owner, payee2, 100 * USDC_1);
        _register(owner, key2, payee2, LIMIT);
        // A real voucher of key2 (for payee2) cannot be routed to key's payee or vice versa.
        bytes memory sig = _voucher(KEY2_PK, payee2, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 10 * USDC_1, sig);
        _settle(key2, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee2), 10 * USDC_1, "payee2 paid by its own key");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee got nothing");
    }

    // ============================================== cross-purpose signatures

    function test_attack_registrationSignatureReusedAsVoucherIsRefused() public {
        // The owner registers its own address as a session key whose payee is the attacker…
        address attacker = stranger;
        _register(owner, owner, attacker, LIMIT);
        // …and signs some registration for a relayer, which the attacker sees.
        uint128 amount = 50_000_000; // 50 USDC
        bytes32 regDigest = Digests.registration(
            _separator(address(validator)), owner, key2, payee, amount, 0, u48(T0 + 1 days), 0, T0 + 1 hours
        );
        bytes memory regSig = _sign(OWNER_PK, regDigest);
        (uint8 v, bytes32 r, bytes32 s) = _split(regSig);
        vm.assertEq(ecrecover(regDigest, v, r, s), owner, "a genuine owner signature");

        // The attacker (the key's payee, so it may settle) submits it as the owner-key's
        // voucher, for any amount. It even funds a tab, so only the signature can stop it.
        _deposit(owner, attacker, 100 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, owner));
        vm.prank(attacker);
        validator.settle(owner, amount, regSig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, owner));
        vm.prank(attacker);
        validator.settle(owner, 1, regSig);
        vm.assertEq(usdc.balanceOf(attacker), 0, "attacker got nothing");
        vm.assertEq(_tab(owner, payee), 1_000 * USDC_1, "tab intact");

        // The signature still does what it was made for.
        validator.registerSessionKeyWithSig(key2, payee, amount, 0, u48(T0 + 1 days), owner, 0, T0 + 1 hours, regSig);
        vm.assertEq(validator.sessionKeyOf(key2).owner, owner, "registered");
    }

    function test_attack_voucherReusedAsRegistrationIsRefused() public {
        // The owner's own address as a session key signs a voucher; that signature must not
        // register anything.
        _register(owner, owner, payee, LIMIT);
        bytes memory voucherSig = _voucher(OWNER_PK, payee, 10 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key2, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, voucherSig);
        vm.assertEq(validator.sessionKeyOf(key2).owner, address(0), "nothing registered");
    }

    function test_attack_freezeSignatureReusedAsUnfreezeOrRevokeIsRefused() public {
        bytes memory freezeSig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0 + 1 hours);

        // Unused, with the right nonce: still not a revocation…
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.revokeWithSig(key, 0, T0 + 1 hours, freezeSig);

        // …and not an unfreeze of a key the owner froze directly.
        vm.prank(owner);
        validator.freeze(key);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.unfreezeWithSig(key, 0, T0 + 1 hours, freezeSig);
        vm.prank(owner);
        validator.unfreeze(key);

        // Used once as a freeze, it is spent for every purpose.
        validator.freezeWithSig(key, 0, T0 + 1 hours, freezeSig);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.unfreezeWithSig(key, 0, T0 + 1 hours, freezeSig);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.revokeWithSig(key, 0, T0 + 1 hours, freezeSig);

        SessionKeyValidator.SessionKey memory k = validator.sessionKeyOf(key);
        vm.assertEq(k.frozenAt, T0, "still frozen");
        vm.assertEq(k.revokedAt, 0, "not revoked");
    }

    function test_attack_freezeSignatureForOneKeyDoesNotFreezeAnother() public {
        _register(owner, key2, payee, LIMIT);
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.freezeWithSig(key2, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key2).frozenAt, 0, "key2 not frozen");
    }

    // ========================================================== malleability

    function test_attack_highSTwinSignatureIsRefused() public {
        uint256 amount = 10 * USDC_1;
        bytes32 digest = Digests.voucher(_separator(address(validator)), key, payee, amount);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(KEY_PK, digest);
        bytes32 twinS = bytes32(Digests.SECP256K1_N - uint256(s));
        uint8 twinV = v == 27 ? 28 : 27;
        // The twin is a valid secp256k1 signature for the same key…
        vm.assertEq(ecrecover(digest, twinV, r, twinS), key, "raw ecrecover accepts the twin");

        // …but the contract refuses high-s signatures outright.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, amount, abi.encodePacked(r, twinS, twinV));

        _settle(key, amount, abi.encodePacked(r, s, v));
        vm.assertEq(usdc.balanceOf(payee), amount, "only the canonical signature pays");
    }

    // ========================================================== amount abuse

    function test_attack_settleAboveLimitIsRefused() public {
        uint256 amount = uint256(LIMIT) + 1;
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, amount, LIMIT));
        _settle(key, amount, _voucher(KEY_PK, payee, amount));
        // A compromised agent signs the maximum: only the limit can ever leave.
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, type(uint256).max, LIMIT)
        );
        _settle(key, type(uint256).max, _voucher(KEY_PK, payee, type(uint256).max));
        _settle(key, LIMIT, _voucher(KEY_PK, payee, LIMIT));
        vm.assertEq(usdc.balanceOf(payee), LIMIT, "payee capped at the limit");
    }

    function test_attack_voucherAboveTheTabPaysNoMoreThanTheTab() public {
        _register(owner, key2, payee, type(uint128).max);
        uint256 amount = 1_000 * USDC_1 + 1;
        vm.assertEq(_settle(key2, amount, _voucher(KEY2_PK, payee, amount)), 1_000 * USDC_1, "the tab, no more");
        vm.assertEq(_settled(key2), 1_000 * USDC_1, "settled what was paid");
        vm.assertEq(usdc.balanceOf(address(validator)), 0, "nothing else to take");
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, owner, payee));
        _settle(key2, amount, _voucher(KEY2_PK, payee, amount));
    }

    function test_attack_tabsOfOtherOwnersAndPayeesAreNeverTouched() public {
        _deposit(stranger, payee, 500 * USDC_1); // another owner, same payee
        _deposit(owner, payee2, 300 * USDC_1); // same owner, another payee
        _register(owner, key2, payee, type(uint128).max);
        // key2's owner has 1,000 with payee; neither other tab can top it up.
        uint256 amount = 1_800 * USDC_1;
        vm.assertEq(_settle(key2, amount, _voucher(KEY2_PK, payee, amount)), 1_000 * USDC_1, "owner's tab only");
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, owner, payee));
        _settle(key2, amount, _voucher(KEY2_PK, payee, amount));
        vm.assertEq(_tab(stranger, payee), 500 * USDC_1, "stranger's tab intact");
        vm.assertEq(_tab(owner, payee2), 300 * USDC_1, "owner's tab with payee2 intact");
        vm.assertEq(usdc.balanceOf(address(validator)), 800 * USDC_1, "both still held");
    }

    function test_attack_sameVoucherTwiceSettlesOnce() public {
        bytes memory sig = _voucher(KEY_PK, payee, 10 * USDC_1);
        _settle(key, 10 * USDC_1, sig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 10 * USDC_1, 10 * USDC_1));
        _settle(key, 10 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once");
    }

    function test_attack_olderLowerVoucherAfterAHigherOneSettlesNothing() public {
        bytes memory low = _voucher(KEY_PK, payee, 4 * USDC_1);
        _settle(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 4 * USDC_1, 10 * USDC_1)
        );
        _settle(key, 4 * USDC_1, low);
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid the highest voucher only");
    }

    function test_attack_sameVoucherTwiceInOneBatchSettlesOnce() public {
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = SessionKeyValidator.Claim(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        claims[1] = claims[0];
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.ClaimSkipped(key, SessionKeyValidator.SkipReason.NothingToSettle);
        vm.prank(relayer);
        uint256 total = validator.settleBatch(payee, claims);
        vm.assertEq(total, 10 * USDC_1, "paid once");
        vm.assertEq(usdc.balanceOf(payee), 10 * USDC_1, "paid once");
        vm.assertEq(_settled(key), 10 * USDC_1, "settled once");
    }

    // ======================================================= dodging the bill

    function test_attack_freezeToDodgeStillPaysWithinGrace() public {
        _settle(key, 5 * USDC_1, _voucher(KEY_PK, payee, 5 * USDC_1));
        // The gateway served more; the owner freezes before it settles.
        bytes memory owed = _voucher(KEY_PK, payee, 9 * USDC_1);
        vm.warp(T0 + 1 hours);
        vm.prank(owner);
        validator.freeze(key);

        vm.warp(T0 + 1 hours + GRACE); // last second of grace
        _settle(key, 9 * USDC_1, owed);
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "payee collected within grace");

        vm.warp(T0 + 1 hours + GRACE + 1);
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + 1 hours + GRACE)
        );
        _settle(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "nothing after grace");
    }

    function test_attack_guardianFreezeDoesNotDodgeEither() public {
        vm.prank(owner);
        validator.setGuardian(guardian);
        bytes memory owed = _voucher(KEY_PK, payee, 9 * USDC_1);
        vm.prank(guardian);
        validator.freeze(key);
        vm.warp(T0 + GRACE - 1);
        _settle(key, 9 * USDC_1, owed);
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "payee collected");
        // And the guardian cannot restart spending.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotKeyOwner.selector, key, guardian));
        vm.prank(guardian);
        validator.unfreeze(key);
    }

    function test_attack_refreezeCannotShortenTheWindow() public {
        vm.prank(owner);
        validator.freeze(key);
        vm.prank(owner);
        validator.unfreeze(key);
        vm.warp(T0 + 10);
        vm.prank(owner);
        validator.freeze(key);
        vm.assertEq(validator.settleableUntil(key), T0 + 10 + GRACE, "a later freeze only moves the window later");
    }

    function test_attack_settleAfterRevokePlusGraceIsRefused() public {
        bytes memory owed = _voucher(KEY_PK, payee, 3 * USDC_1);
        vm.prank(owner);
        validator.revoke(key);

        vm.warp(T0 + GRACE);
        _settle(key, 3 * USDC_1, owed);

        bytes memory late = _voucher(KEY_PK, payee, 4 * USDC_1);
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        _settle(key, 4 * USDC_1, late);
        vm.assertEq(usdc.balanceOf(payee), 3 * USDC_1, "only the in-grace voucher paid");
    }

    function test_attack_revokedKeyCannotBeReRegisteredToReviveVouchers() public {
        bytes memory old = _voucher(KEY_PK, payee, 3 * USDC_1);
        vm.prank(owner);
        validator.revoke(key);
        vm.warp(T0 + 2 * GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key));
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, u48(block.timestamp), u48(block.timestamp + 1 days));
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE)
        );
        _settle(key, 3 * USDC_1, old);
    }

    function test_attack_withdrawalRacingASettlementPaysThePayeeFirst() public {
        bytes memory owed = _voucher(KEY_PK, payee, 30 * USDC_1);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 1_000 * USDC_1); // everything

        vm.warp(T0 + GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + GRACE)));
        vm.prank(owner);
        validator.withdraw(payee);

        _settle(key, 30 * USDC_1, owed); // the payee settles during the wait

        vm.warp(T0 + GRACE + 1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, payee, 970 * USDC_1);
        vm.prank(owner);
        uint256 out = validator.withdraw(payee);

        vm.assertEq(out, 970 * USDC_1, "owner gets only the remainder");
        vm.assertEq(usdc.balanceOf(owner), 970 * USDC_1, "owner balance");
        vm.assertEq(usdc.balanceOf(payee), 30 * USDC_1, "payee paid in full");
        vm.assertEq(_tab(owner, payee), 0, "tab empty");
        vm.assertEq(usdc.balanceOf(address(validator)), 0, "nothing stranded");
    }

    function test_attack_rerequestingAWithdrawalRestartsTheWait() public {
        vm.prank(owner);
        validator.requestWithdrawal(payee, 10 * USDC_1);
        vm.warp(T0 + GRACE - 10);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 1_000 * USDC_1); // try to enlarge the ready request
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + 2 * GRACE - 10))
        );
        vm.prank(owner);
        validator.withdraw(payee);
    }

    function test_attack_keySquattingCannotSpendTheVictimsTab() public {
        // An attacker registers a victim agent's key address first, pointing it at itself.
        address attacker = stranger;
        _register(attacker, key3, attacker, LIMIT);
        // The victim's vouchers (for its payee) settle nothing against the attacker's entry…
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key3));
        vm.prank(attacker);
        validator.settle(key3, 5 * USDC_1, _voucher(KEY3_PK, payee, 5 * USDC_1));
        // …and a voucher the attacker gets for itself draws on the attacker's (empty) tab only.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, attacker, attacker));
        vm.prank(attacker);
        validator.settle(key3, 5 * USDC_1, _voucher(KEY3_PK, attacker, 5 * USDC_1));
        vm.assertEq(_tab(owner, payee), 1_000 * USDC_1, "victim's tab intact");
    }

    // ============================================================== settlers

    function test_attack_settlerIsPaidNothingAndCannotRedirectThePayout() public {
        _settle(key, 4 * USDC_1, _voucher(KEY_PK, payee, 4 * USDC_1));
        // A voucher naming the settler as payee is not the key's.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 8 * USDC_1, _voucher(KEY_PK, relayer, 8 * USDC_1));
        // A batch for another payee skips the key: it pays only to `payee`.
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = SessionKeyValidator.Claim(key, 8 * USDC_1, _voucher(KEY_PK, payee, 8 * USDC_1));
        vm.prank(relayer);
        vm.assertEq(validator.settleBatch(payee2, claims), 0, "nothing through payee2's batch");
        vm.assertEq(usdc.balanceOf(relayer), 0, "settler got nothing");
        vm.assertEq(usdc.balanceOf(payee2), 0, "payee2 got nothing");
        vm.assertEq(usdc.balanceOf(payee), 4 * USDC_1, "only the payee is paid");
    }

    function test_attack_keyActionSignatureCannotAuthoriseASettler() public {
        // The owner signs a relayed freeze with nonce 0. An attacker presents it as the owner's
        // SetSettler (the owner may also be a payee; both spend the same nonces).
        bytes memory freezeSig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayeeSignature.selector, owner));
        vm.prank(stranger);
        validator.setSettlerWithSig(owner, stranger, true, 0, T0, freezeSig);
        vm.assertFalse(validator.isSettler(owner, stranger), "not authorised");
        // And a SetSettler signature is no key action either.
        bytes memory settlerSig = _settlerSig(OWNER_PK, stranger, true, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.revokeWithSig(key, 0, T0, settlerSig);
        vm.assertEq(validator.sessionKeyOf(key).revokedAt, 0, "not revoked");
        vm.assertEq(validator.nonces(owner), 0, "no nonce spent");
    }

    // =================================================================
    // Regression tests for issue 8's findings. Each was reproduced against the previous
    // contract (one escrow pot per owner, settlement open to anyone, all-or-nothing batches,
    // withdraw allowed at readyAt, no partial payment); each assertion below failed there.
    // =================================================================

    /// Finding 1: an owner could empty its escrow in one block, with no withdrawal delay.
    /// Escrow was one pot per owner and registering a key reserved none of it. The owner
    /// registered a second key whose payee is an address it controls, with a huge limit,
    /// signed a voucher for the whole escrow and settled it. The API's served-but-unsettled
    /// calls then reverted with InsufficientEscrow.
    /// Now a key draws only on its owner's tab with its own payee: the self-payee key finds an
    /// empty tab (or the owner's own money, if it funds one), and the API's voucher settles in full.
    function test_finding1_ownerCannotDrainTabsWithSelfPayeeKey() public {
        // The API (payee) served 30 USDC of calls to `key`; its voucher is not settled yet.
        bytes memory served = _voucher(KEY_PK, payee, 30 * USDC_1);

        // The attack: key2 pays `sink`, an address the owner controls, with an unlimited limit.
        address sink = address(0x51A4);
        _register(owner, key2, sink, type(uint128).max);
        uint256 everything = 1_000 * USDC_1;
        bytes memory drain = _voucher(KEY2_PK, sink, everything);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, owner, sink));
        vm.prank(sink); // the sink is key2's payee, so it may settle
        validator.settle(key2, everything, drain);
        // Pushing the drain through the API's batch does not work either.
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = SessionKeyValidator.Claim(key2, everything, drain);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, sink));
        vm.prank(sink);
        validator.settleBatch(payee, claims);
        // Funding the sink's tab only moves the owner's own new money.
        _deposit(owner, sink, 5 * USDC_1);
        vm.prank(sink);
        vm.assertEq(validator.settle(key2, everything, drain), 5 * USDC_1, "only the sink's tab");

        vm.assertEq(usdc.balanceOf(sink), 5 * USDC_1, "the sink got the owner's 5, nothing of the API's tab");
        vm.assertEq(_tab(owner, payee), 1_000 * USDC_1, "the tab with the API is untouched");
        // The API's served voucher still settles in full.
        vm.assertEq(_settle(key, 30 * USDC_1, served), 30 * USDC_1, "served voucher paid in full");
        vm.assertEq(usdc.balanceOf(payee), 30 * USDC_1, "payee");
        vm.assertEq(_tab(owner, payee), 970 * USDC_1, "tab");
    }

    /// Finding 2: one claim sank a whole settleBatch. Settlement was open to anyone: someone
    /// copied one claim out of a pending batch and settled it first; the batch then reverted
    /// NothingToSettle and every other owner's claim in it went unpaid.
    /// Now only the payee and its settlers can settle (the copy is refused), and a claim that
    /// was settled anyway (here, by the payee itself) is skipped while the rest are paid.
    function test_finding2_frontRunClaimCannotSinkBatch() public {
        address ownerB = address(0xB0B);
        _deposit(ownerB, 50 * USDC_1);
        _register(ownerB, key2, payee, LIMIT);
        _register(owner, key3, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = SessionKeyValidator.Claim(key, 5 * USDC_1, _voucher(KEY_PK, payee, 5 * USDC_1));
        claims[1] = SessionKeyValidator.Claim(key2, 7 * USDC_1, _voucher(KEY2_PK, payee, 7 * USDC_1));
        claims[2] = SessionKeyValidator.Claim(key3, 9 * USDC_1, _voucher(KEY3_PK, payee, 9 * USDC_1));

        // The attacker copies claim 1 out of the pending batch and races it.
        address attacker = address(0xA77AC);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, attacker));
        vm.prank(attacker);
        validator.settle(key2, 7 * USDC_1, claims[1].signature);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, attacker));
        vm.prank(attacker);
        validator.settleBatch(payee, claims);

        // Even when claim 1 does get settled first (the payee settles it itself), the batch
        // skips it and pays the others.
        vm.prank(payee);
        validator.settle(key2, 7 * USDC_1, claims[1].signature);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.ClaimSkipped(key2, SessionKeyValidator.SkipReason.NothingToSettle);
        vm.prank(relayer);
        uint256 total = validator.settleBatch(payee, claims);

        vm.assertEq(total, 14 * USDC_1, "the other claims are paid");
        vm.assertEq(_settled(key), 5 * USDC_1, "owner's key");
        vm.assertEq(_settled(key3), 9 * USDC_1, "owner's other key");
        vm.assertEq(_settled(key2), 7 * USDC_1, "ownerB's key, once");
        vm.assertEq(usdc.balanceOf(payee), 21 * USDC_1, "payee got every claim once");
        vm.assertEq(_tab(ownerB, payee), 43 * USDC_1, "ownerB paid once");
    }

    /// Finding 2, second half: an owner short of escrow sank the batch the same way
    /// (InsufficientEscrow reverted it). Now an empty tab is skipped and a short one pays
    /// what it holds; the other owners' claims are paid.
    function test_finding2_ownerShortOfFundsCannotSinkBatch() public {
        address broke = address(0xB0B);
        address shortOwner = address(0xC0C);
        _register(broke, key2, payee, LIMIT); // no tab with payee at all
        _deposit(shortOwner, 3 * USDC_1);
        _register(shortOwner, key3, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = SessionKeyValidator.Claim(key2, 4 * USDC_1, _voucher(KEY2_PK, payee, 4 * USDC_1));
        claims[1] = SessionKeyValidator.Claim(key3, 10 * USDC_1, _voucher(KEY3_PK, payee, 10 * USDC_1));
        claims[2] = SessionKeyValidator.Claim(key, 5 * USDC_1, _voucher(KEY_PK, payee, 5 * USDC_1));

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.ClaimSkipped(key2, SessionKeyValidator.SkipReason.EmptyTab);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key3, 3 * USDC_1, 3 * USDC_1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key, 5 * USDC_1, 5 * USDC_1);
        vm.prank(relayer);
        uint256 total = validator.settleBatch(payee, claims);

        vm.assertEq(total, 8 * USDC_1, "short tab's 3 + the funded owner's 5");
        vm.assertEq(_settled(key), 5 * USDC_1, "the funded owner's claim is paid");
        vm.assertEq(_settled(key3), 3 * USDC_1, "the short owner paid what it held");
        vm.assertEq(_settled(key2), 0, "the broke owner's claim waits");
        vm.assertEq(usdc.balanceOf(payee), 8 * USDC_1, "payee");
    }

    /// Finding 3: a freeze did not cap what could still be paid on-chain. A leaked or runaway
    /// key signed a voucher for its full limit after the freeze, and anyone (the key itself
    /// included) could settle it to the payee within the grace window, for calls never served.
    /// Now only the payee and its settlers settle, and they submit the vouchers the gateway
    /// took for calls it served.
    function test_finding3_leakedKeyCannotSettleAfterFreeze() public {
        bytes memory served = _voucher(KEY_PK, payee, 9 * USDC_1);
        vm.warp(T0 + 1 hours);
        vm.prank(owner);
        validator.freeze(key);

        // Whoever holds the leaked key signs its whole limit after the freeze…
        bytes memory runaway = _voucher(KEY_PK, payee, LIMIT);
        address[3] memory pushers = [key, stranger, owner];
        for (uint256 i; i < pushers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, pushers[i]));
            vm.prank(pushers[i]);
            validator.settle(key, LIMIT, runaway);
        }
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = SessionKeyValidator.Claim(key, LIMIT, runaway);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, key));
        vm.prank(key);
        validator.settleBatch(payee, claims);

        // …while the payee still collects what it served, within grace.
        vm.warp(T0 + 1 hours + GRACE);
        vm.assertEq(_settle(key, 9 * USDC_1, served), 9 * USDC_1, "served voucher paid");
        vm.assertEq(_settled(key), 9 * USDC_1, "settled: only what was served");
        vm.assertEq(usdc.balanceOf(payee), 9 * USDC_1, "payee: only what was served");
        vm.assertEq(_tab(owner, payee), 991 * USDC_1, "tab");
    }

    /// Finding 4: when the owner froze a key and asked to withdraw in the same second, then
    /// at readyAt == stoppedAt + GRACE both withdraw and settle were valid. A withdraw ordered
    /// first emptied the escrow and the payee's last-second settle failed.
    /// Now settling is allowed up to and including graceEndsAt and withdrawing only after it.
    function test_finding4_withdrawAndSettleWindowsDoNotOverlap() public {
        bytes memory served = _voucher(KEY_PK, payee, 40 * USDC_1);
        uint256 t = T0 + 1 hours;
        vm.warp(t);
        vm.startPrank(owner);
        validator.freeze(key);
        validator.requestWithdrawal(payee, 1_000 * USDC_1);
        vm.stopPrank();
        (,, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(graceEndsAt, t + GRACE, "graceEndsAt");
        vm.assertEq(validator.settleableUntil(key), t + GRACE, "the same second ends the settle window");

        // The last second: the owner's withdraw is ordered first, then the payee's settle.
        vm.warp(t + GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, graceEndsAt));
        vm.prank(owner);
        validator.withdraw(payee);
        vm.assertEq(_settle(key, 40 * USDC_1, served), 40 * USDC_1, "the payee's last-second settle pays in full");

        // The next second belongs to the owner alone.
        vm.warp(t + GRACE + 1);
        bytes memory late = _voucher(KEY_PK, payee, 50 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, t + GRACE));
        _settle(key, 50 * USDC_1, late);
        vm.prank(owner);
        vm.assertEq(validator.withdraw(payee), 960 * USDC_1, "the owner withdraws the rest");
        vm.assertEq(usdc.balanceOf(payee), 40 * USDC_1, "payee");
        vm.assertEq(usdc.balanceOf(address(validator)), 0, "nothing stranded");
    }

    /// Finding 5: no partial settlement. With 25 in escrow and a voucher adding 30, the
    /// settle reverted and the payee got 0. Now it gets the 25, `settled` advances by 25, and
    /// the other 5 stays claimable with the same voucher once the tab is topped up.
    function test_finding5_shortTabPaysWhatItHolds() public {
        _deposit(owner, payee2, 25 * USDC_1);
        _register(owner, key2, payee2, LIMIT);
        bytes memory sig = _voucher(KEY2_PK, payee2, 30 * USDC_1);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key2, 25 * USDC_1, 25 * USDC_1);
        vm.assertEq(_settle(key2, 30 * USDC_1, sig), 25 * USDC_1, "pays the 25 the tab holds");
        vm.assertEq(usdc.balanceOf(payee2), 25 * USDC_1, "payee2 got 25, not 0");
        vm.assertEq(_settled(key2), 25 * USDC_1, "settled advances by what was paid");
        vm.assertEq(_tab(owner, payee2), 0, "tab emptied");
        vm.assertEq(_tab(owner, payee), 1_000 * USDC_1, "the tab with payee was not touched");

        _deposit(owner, payee2, 10 * USDC_1);
        vm.assertEq(_settle(key2, 30 * USDC_1, sig), 5 * USDC_1, "the rest, with the same voucher");
        vm.assertEq(usdc.balanceOf(payee2), 30 * USDC_1, "payee2 paid in full");
        vm.assertEq(_tab(owner, payee2), 5 * USDC_1, "tab keeps the remainder");
    }

    function _split(bytes memory sig) internal pure returns (uint8 v, bytes32 r, bytes32 s) {
        assembly ("memory-safe") {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
    }
}
