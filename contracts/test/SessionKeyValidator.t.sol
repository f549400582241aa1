// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {SessionKeyValidator} from "../src/SessionKeyValidator.sol";
import {Vm} from "./utils/Test.sol";
import {ValidatorFixture} from "./utils/Fixture.sol";
import {Digests} from "./utils/Digests.sol";
import {ERC1271Wallet, FeeOnTransferToken} from "./utils/Mocks.sol";

/// @notice Unit tests: every function, every revert reason, every event.
contract SessionKeyValidatorTest is ValidatorFixture {
    bytes32 internal constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");

    // ============================================================ constructor

    function test_constructor_setsTokenGraceAndDomain() public view {
        vm.assertEq(address(validator.USDC()), address(usdc), "USDC");
        vm.assertEq(validator.GRACE(), GRACE, "GRACE");
        vm.assertEq(validator.domainSeparator(), _separator(address(validator)), "domain separator");
    }

    function test_constructor_typehashesMatchTheTypeStrings() public view {
        vm.assertEq(validator.VOUCHER_TYPEHASH(), Digests.VOUCHER_TYPEHASH, "voucher");
        vm.assertEq(validator.REGISTER_TYPEHASH(), Digests.REGISTER_TYPEHASH, "register");
        vm.assertEq(validator.FREEZE_TYPEHASH(), Digests.FREEZE_TYPEHASH, "freeze");
        vm.assertEq(validator.UNFREEZE_TYPEHASH(), Digests.UNFREEZE_TYPEHASH, "unfreeze");
        vm.assertEq(validator.REVOKE_TYPEHASH(), Digests.REVOKE_TYPEHASH, "revoke");
    }

    function test_constructor_revertsOnZeroToken() public {
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        new SessionKeyValidator(NAME, VERSION, IERC20(address(0)), GRACE);
    }

    function test_constructor_revertsWhenGraceBelowMinimum() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.GraceOutOfRange.selector, 15 minutes - 1));
        new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), 15 minutes - 1);
    }

    function test_constructor_revertsWhenGraceAboveMaximum() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.GraceOutOfRange.selector, 30 days + 1));
        new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), 30 days + 1);
    }

    function test_constructor_acceptsGraceBounds() public {
        SessionKeyValidator shortest = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), 15 minutes);
        SessionKeyValidator longest = new SessionKeyValidator(NAME, VERSION, IERC20(address(usdc)), 30 days);
        vm.assertEq(shortest.GRACE(), validator.MIN_GRACE(), "min grace");
        vm.assertEq(longest.GRACE(), validator.MAX_GRACE(), "max grace");
    }

    // ================================================================ deposit

    function test_deposit_pullsTokensCreditsEscrowAndEmits() public {
        usdc.mint(owner, 50 * USDC_1);
        vm.prank(owner);
        usdc.approve(address(validator), 50 * USDC_1);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Deposited(owner, 30 * USDC_1);
        vm.prank(owner);
        validator.deposit(30 * USDC_1);

        vm.assertEq(validator.escrowOf(owner), 30 * USDC_1, "escrow");
        vm.assertEq(usdc.balanceOf(owner), 20 * USDC_1, "owner balance");
        vm.assertEq(usdc.balanceOf(address(validator)), 30 * USDC_1, "validator balance");
    }

    function test_deposit_accumulates() public {
        _deposit(owner, 10);
        _deposit(owner, 15);
        vm.assertEq(validator.escrowOf(owner), 25, "escrow");
    }

    function test_deposit_revertsOnZeroAmount() public {
        vm.expectRevert(SessionKeyValidator.ZeroAmount.selector);
        vm.prank(owner);
        validator.deposit(0);
    }

    function test_deposit_revertsWithoutAllowance() public {
        usdc.mint(owner, 10);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(validator), 0, 10)
        );
        vm.prank(owner);
        validator.deposit(10);
    }

    function test_deposit_creditsOnlyWhatAFeeOnTransferTokenDelivers() public {
        FeeOnTransferToken fee = new FeeOnTransferToken(100); // 1 %
        SessionKeyValidator v = new SessionKeyValidator(NAME, VERSION, IERC20(address(fee)), GRACE);
        fee.mint(owner, 1_000);
        vm.prank(owner);
        fee.approve(address(v), 1_000);

        vm.expectEmit(true, true, true, true, address(v));
        emit SessionKeyValidator.Deposited(owner, 990);
        vm.prank(owner);
        v.deposit(1_000);

        vm.assertEq(v.escrowOf(owner), 990, "escrow is what arrived");
        vm.assertEq(fee.balanceOf(address(v)), 990, "balance equals escrow");
    }

    // ======================================================== setGuardian

    function test_setGuardian_storesAndEmits() public {
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.GuardianSet(owner, guardian);
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.assertEq(validator.guardianOf(owner), guardian, "guardian");
    }

    function test_setGuardian_zeroRemovesTheGuardian() public {
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.GuardianSet(owner, address(0));
        vm.prank(owner);
        validator.setGuardian(address(0));
        vm.assertEq(validator.guardianOf(owner), address(0), "guardian removed");
    }

    // ================================================== registerSessionKey

    function test_registerSessionKey_storesKeyAndEmits() public {
        uint48 validAfter = u48(T0 + 1 hours);
        uint48 validUntil = u48(T0 + 7 days);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyRegistered(owner, key, payee, LIMIT, validAfter, validUntil);
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, validAfter, validUntil);

        SessionKeyValidator.SessionKey memory k = validator.sessionKeyOf(key);
        vm.assertEq(k.owner, owner, "owner");
        vm.assertEq(k.payee, payee, "payee");
        vm.assertEq(k.limit, LIMIT, "limit");
        vm.assertEq(k.validAfter, validAfter, "validAfter");
        vm.assertEq(k.validUntil, validUntil, "validUntil");
        vm.assertEq(k.frozenAt, 0, "frozenAt");
        vm.assertEq(k.revokedAt, 0, "revokedAt");
        vm.assertEq(k.settled, 0, "settled");
        vm.assertEq(validator.settleableUntil(key), validUntil + GRACE, "settleableUntil");
    }

    function test_registerSessionKey_acceptsAWindowThatStartedInThePast() public {
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, 0, u48(T0 + 1));
        vm.assertEq(validator.sessionKeyOf(key).validAfter, 0, "validAfter");
    }

    function test_registerSessionKey_revertsOnZeroKey() public {
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        vm.prank(owner);
        validator.registerSessionKey(address(0), payee, LIMIT, u48(T0), u48(T0 + 1 days));
    }

    function test_registerSessionKey_revertsOnZeroPayee() public {
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        vm.prank(owner);
        validator.registerSessionKey(key, address(0), LIMIT, u48(T0), u48(T0 + 1 days));
    }

    function test_registerSessionKey_revertsWhenPayeeIsTheValidator() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayee.selector, address(validator)));
        vm.prank(owner);
        validator.registerSessionKey(key, address(validator), LIMIT, u48(T0), u48(T0 + 1 days));
    }

    function test_registerSessionKey_revertsOnZeroLimit() public {
        vm.expectRevert(SessionKeyValidator.ZeroLimit.selector);
        vm.prank(owner);
        validator.registerSessionKey(key, payee, 0, u48(T0), u48(T0 + 1 days));
    }

    function test_registerSessionKey_revertsWhenWindowIsEmpty() public {
        uint48 t = u48(T0 + 1 days);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidValidityWindow.selector, t, t));
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, t, t);
    }

    function test_registerSessionKey_revertsWhenWindowIsInverted() public {
        uint48 validAfter = u48(T0 + 2 days);
        uint48 validUntil = u48(T0 + 1 days);
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.InvalidValidityWindow.selector, validAfter, validUntil)
        );
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, validAfter, validUntil);
    }

    function test_registerSessionKey_revertsWhenAlreadyExpired() public {
        uint48 validUntil = u48(T0); // == now: expired
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.AlreadyExpired.selector, validUntil));
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, 0, validUntil);
    }

    function test_registerSessionKey_revertsWhenKeyExistsForSameOwner() public {
        _register(owner, key, payee, LIMIT);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key));
        vm.prank(owner);
        validator.registerSessionKey(key, payee2, LIMIT * 2, u48(T0), u48(T0 + 1 days));
        vm.assertEq(validator.sessionKeyOf(key).payee, payee, "not overwritten");
    }

    function test_registerSessionKey_revertsWhenKeyExistsForAnotherOwner() public {
        _register(owner, key, payee, LIMIT);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key));
        vm.prank(stranger);
        validator.registerSessionKey(key, payee2, LIMIT, u48(T0), u48(T0 + 1 days));
        vm.assertEq(validator.sessionKeyOf(key).owner, owner, "owner kept");
    }

    function test_registerSessionKey_revertsForARevokedKey() public {
        _register(owner, key, payee, LIMIT);
        vm.prank(owner);
        validator.revoke(key);
        vm.warp(T0 + 2 * GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key));
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, u48(block.timestamp), u48(block.timestamp + 1 days));
    }

    // =========================================== registerSessionKeyWithSig

    function test_registerSessionKeyWithSig_eoaOwnerViaRelayer() public {
        uint48 validAfter = u48(T0);
        uint48 validUntil = u48(T0 + 7 days);
        uint256 deadline = T0 + 1 hours;
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, validAfter, validUntil, 0, deadline);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyRegistered(owner, key, payee, LIMIT, validAfter, validUntil);
        vm.prank(relayer);
        validator.registerSessionKeyWithSig(key, payee, LIMIT, validAfter, validUntil, owner, 0, deadline, sig);

        vm.assertEq(validator.sessionKeyOf(key).owner, owner, "owner is the signer, not the relayer");
        vm.assertEq(validator.nonces(owner), 1, "nonce spent");
        vm.assertEq(validator.nonces(relayer), 0, "relayer nonce untouched");
    }

    function test_registerSessionKeyWithSig_acceptsDeadlineEqualToNow() public {
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0);
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).owner, owner, "registered");
    }

    function test_registerSessionKeyWithSig_erc1271Owner() public {
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        uint48 validUntil = u48(T0 + 7 days);
        bytes32 digest = Digests.registration(
            _separator(address(validator)), address(wallet), key, payee, LIMIT, 0, validUntil, 0, T0 + 1 hours
        );
        bytes memory sig = _sign(OWNER_PK, digest);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyRegistered(address(wallet), key, payee, LIMIT, 0, validUntil);
        vm.prank(relayer);
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, validUntil, address(wallet), 0, T0 + 1 hours, sig);
        vm.assertEq(validator.sessionKeyOf(key).owner, address(wallet), "wallet owns the key");
        vm.assertEq(validator.nonces(address(wallet)), 1, "wallet nonce spent");

        // The wallet funds it and the key's vouchers settle from the wallet's escrow.
        usdc.mint(address(wallet), 10 * USDC_1);
        vm.startPrank(owner);
        wallet.execute(address(usdc), abi.encodeCall(usdc.approve, (address(validator), 10 * USDC_1)));
        wallet.execute(address(validator), abi.encodeCall(validator.deposit, (10 * USDC_1)));
        vm.stopPrank();
        validator.settle(key, 4 * USDC_1, _voucher(KEY_PK, payee, 4 * USDC_1));
        vm.assertEq(validator.escrowOf(address(wallet)), 6 * USDC_1, "wallet escrow");
        vm.assertEq(usdc.balanceOf(payee), 4 * USDC_1, "payee");
    }

    function test_registerSessionKeyWithSig_revertsForErc1271OwnerWithWrongSigner() public {
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        bytes32 digest = Digests.registration(
            _separator(address(validator)), address(wallet), key, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0
        );
        bytes memory sig = _sign(OTHER_PK, digest);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, address(wallet)));
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), address(wallet), 0, T0, sig);
    }

    function test_registerSessionKeyWithSig_revertsWhenSignatureExpired() public {
        uint256 deadline = T0 - 1;
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, 0, u48(T0 + 1 days), 0, deadline);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SignatureExpired.selector, deadline));
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, deadline, sig);
    }

    function test_registerSessionKeyWithSig_revertsOnZeroOwner() public {
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0);
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), address(0), 0, T0, sig);
    }

    function test_registerSessionKeyWithSig_revertsWhenSignedByAnotherKey() public {
        bytes32 digest = Digests.registration(
            _separator(address(validator)), owner, key, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0
        );
        bytes memory sig = _sign(OTHER_PK, digest);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, sig);
    }

    function test_registerSessionKeyWithSig_revertsWhenATermIsChanged() public {
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0);
        // The relayer raises the limit it was given.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key, payee, LIMIT + 1, 0, u48(T0 + 1 days), owner, 0, T0, sig);
        // …or swaps the payee.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key, payee2, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, sig);
        vm.assertEq(validator.nonces(owner), 0, "no nonce spent on failure");
    }

    function test_registerSessionKeyWithSig_revertsWhenNonceReused() public {
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0);
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, sig);

        bytes memory sig2 = _registrationSig(OWNER_PK, key2, payee, LIMIT, 0, u48(T0 + 1 days), 0, T0);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.registerSessionKeyWithSig(key2, payee, LIMIT, 0, u48(T0 + 1 days), owner, 0, T0, sig2);
    }

    function test_registerSessionKeyWithSig_revertsOnFutureNonce() public {
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, LIMIT, 0, u48(T0 + 1 days), 5, T0);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 0));
        validator.registerSessionKeyWithSig(key, payee, LIMIT, 0, u48(T0 + 1 days), owner, 5, T0, sig);
    }

    function test_registerSessionKeyWithSig_checksTheSameRulesAsDirectRegistration() public {
        bytes memory sig = _registrationSig(OWNER_PK, key, payee, 0, 0, u48(T0 + 1 days), 0, T0);
        vm.expectRevert(SessionKeyValidator.ZeroLimit.selector);
        validator.registerSessionKeyWithSig(key, payee, 0, 0, u48(T0 + 1 days), owner, 0, T0, sig);
    }

    // ================================================================ freeze

    function test_freeze_byOwnerRecordsAndEmits() public {
        _fundAndRegister();
        vm.warp(T0 + 1 hours);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyFrozen(owner, key, owner, u48(T0 + 1 hours));
        vm.prank(owner);
        validator.freeze(key);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, T0 + 1 hours, "frozenAt");
        vm.assertEq(validator.settleableUntil(key), T0 + 1 hours + GRACE, "window shrinks to GRACE");
    }

    function test_freeze_byGuardian() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyFrozen(owner, key, guardian, u48(T0));
        vm.prank(guardian);
        validator.freeze(key);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, T0, "frozenAt");
    }

    function test_freeze_revertsForStranger() public {
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotOwnerOrGuardian.selector, key, stranger));
        vm.prank(stranger);
        validator.freeze(key);
    }

    function test_freeze_revertsForRemovedGuardian() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.prank(owner);
        validator.setGuardian(address(0));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotOwnerOrGuardian.selector, key, guardian));
        vm.prank(guardian);
        validator.freeze(key);
    }

    function test_freeze_revertsForAnotherOwnersGuardian() public {
        _fundAndRegister();
        vm.prank(stranger);
        validator.setGuardian(guardian); // guardian of the stranger, not of the owner
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotOwnerOrGuardian.selector, key, guardian));
        vm.prank(guardian);
        validator.freeze(key);
    }

    function test_freeze_revertsForUnknownKey() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        vm.prank(owner);
        validator.freeze(key);
    }

    function test_freeze_revertsWhenAlreadyFrozen() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.warp(T0 + 1 hours);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyFrozen.selector, key));
        vm.prank(owner);
        validator.freeze(key);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, T0, "first freeze time kept");
    }

    function test_freeze_revertsWhenRevoked() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.revoke(key);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyRevoked.selector, key));
        vm.prank(owner);
        validator.freeze(key);
    }

    function test_freezeWithSig_relayedFreeze() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0 + 1 hours);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyFrozen(owner, key, owner, u48(T0));
        vm.prank(relayer);
        validator.freezeWithSig(key, 0, T0 + 1 hours, sig);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, T0, "frozen");
        vm.assertEq(validator.nonces(owner), 1, "nonce spent");
    }

    function test_freezeWithSig_erc1271Owner() public {
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _register(address(wallet), key, payee, LIMIT);
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyFrozen(address(wallet), key, address(wallet), u48(T0));
        validator.freezeWithSig(key, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, T0, "frozen");
    }

    function test_freezeWithSig_revertsWhenSignatureExpired() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0 - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SignatureExpired.selector, T0 - 1));
        validator.freezeWithSig(key, 0, T0 - 1, sig);
    }

    function test_freezeWithSig_revertsWhenSignedByGuardian() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.setGuardian(guardian);
        bytes memory sig = _actionSig(GUARDIAN_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.freezeWithSig(key, 0, T0, sig);
    }

    function test_freezeWithSig_revertsForUnknownKey() public {
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        validator.freezeWithSig(key, 0, T0, sig);
    }

    function test_freezeWithSig_revertsWhenNonceReused() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OWNER_PK, Digests.FREEZE_TYPEHASH, key, 0, T0);
        validator.freezeWithSig(key, 0, T0, sig);
        vm.prank(owner);
        validator.unfreeze(key);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.freezeWithSig(key, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, 0, "still unfrozen");
    }

    // ============================================================== unfreeze

    function test_unfreeze_byOwnerLiftsFreezeAndEmits() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyUnfrozen(owner, key);
        vm.prank(owner);
        validator.unfreeze(key);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, 0, "unfrozen");
        vm.assertEq(validator.settleableUntil(key), T0 + LIFETIME + GRACE, "window back to expiry");
    }

    function test_unfreeze_revertsForGuardian() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.prank(guardian);
        validator.freeze(key);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotKeyOwner.selector, key, guardian));
        vm.prank(guardian);
        validator.unfreeze(key);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, T0, "still frozen");
    }

    function test_unfreeze_revertsForStranger() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotKeyOwner.selector, key, stranger));
        vm.prank(stranger);
        validator.unfreeze(key);
    }

    function test_unfreeze_revertsForUnknownKey() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        vm.prank(owner);
        validator.unfreeze(key);
    }

    function test_unfreeze_revertsWhenNotFrozen() public {
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyNotFrozen.selector, key));
        vm.prank(owner);
        validator.unfreeze(key);
    }

    function test_unfreeze_revertsWhenRevoked() public {
        _fundAndRegister();
        vm.startPrank(owner);
        validator.freeze(key);
        validator.revoke(key);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyRevoked.selector, key));
        validator.unfreeze(key);
        vm.stopPrank();
    }

    function test_unfreeze_reopensSettlementAfterGraceHadPassed() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.warp(T0 + GRACE + 1);
        bytes memory sig = _voucher(KEY_PK, payee, 3 * USDC_1);
        vm.expectRevert(
            abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE)
        );
        validator.settle(key, 3 * USDC_1, sig);
        vm.prank(owner);
        validator.unfreeze(key);
        validator.settle(key, 3 * USDC_1, sig);
        vm.assertEq(usdc.balanceOf(payee), 3 * USDC_1, "payee paid after unfreeze");
    }

    function test_unfreezeWithSig_relayedUnfreeze() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        bytes memory sig = _actionSig(OWNER_PK, Digests.UNFREEZE_TYPEHASH, key, 0, T0);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyUnfrozen(owner, key);
        vm.prank(relayer);
        validator.unfreezeWithSig(key, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).frozenAt, 0, "unfrozen");
        vm.assertEq(validator.nonces(owner), 1, "nonce spent");
    }

    function test_unfreezeWithSig_revertsWhenSignedByGuardian() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.prank(guardian);
        validator.freeze(key);
        bytes memory sig = _actionSig(GUARDIAN_PK, Digests.UNFREEZE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.unfreezeWithSig(key, 0, T0, sig);
    }

    function test_unfreezeWithSig_revertsWhenSignatureExpired() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        bytes memory sig = _actionSig(OWNER_PK, Digests.UNFREEZE_TYPEHASH, key, 0, T0);
        vm.warp(T0 + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SignatureExpired.selector, T0));
        validator.unfreezeWithSig(key, 0, T0, sig);
    }

    // ================================================================ revoke

    function test_revoke_byOwnerRecordsAndEmits() public {
        _fundAndRegister();
        vm.warp(T0 + 2 hours);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyRevoked(owner, key, u48(T0 + 2 hours));
        vm.prank(owner);
        validator.revoke(key);
        vm.assertEq(validator.sessionKeyOf(key).revokedAt, T0 + 2 hours, "revokedAt");
        vm.assertEq(validator.settleableUntil(key), T0 + 2 hours + GRACE, "window");
    }

    function test_revoke_ofFrozenKeyKeepsTheEarlierStop() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.warp(T0 + 1 hours);
        vm.prank(owner);
        validator.revoke(key);
        vm.assertEq(validator.settleableUntil(key), T0 + GRACE, "earliest stop wins");
    }

    function test_revoke_revertsForGuardian() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.setGuardian(guardian);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotKeyOwner.selector, key, guardian));
        vm.prank(guardian);
        validator.revoke(key);
    }

    function test_revoke_revertsForUnknownKey() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        vm.prank(owner);
        validator.revoke(key);
    }

    function test_revoke_revertsWhenAlreadyRevoked() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.revoke(key);
        vm.warp(T0 + 1 hours);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyRevoked.selector, key));
        vm.prank(owner);
        validator.revoke(key);
        vm.assertEq(validator.sessionKeyOf(key).revokedAt, T0, "first revocation time kept");
    }

    function test_revokeWithSig_relayedRevoke() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OWNER_PK, Digests.REVOKE_TYPEHASH, key, 0, T0);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyRevoked(owner, key, u48(T0));
        vm.prank(relayer);
        validator.revokeWithSig(key, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).revokedAt, T0, "revoked");
        vm.assertEq(validator.nonces(owner), 1, "nonce spent");
    }

    function test_revokeWithSig_erc1271Owner() public {
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _register(address(wallet), key, payee, LIMIT);
        bytes memory sig = _actionSig(OWNER_PK, Digests.REVOKE_TYPEHASH, key, 0, T0);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SessionKeyRevoked(address(wallet), key, u48(T0));
        validator.revokeWithSig(key, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).revokedAt, T0, "revoked");
    }

    function test_revokeWithSig_revertsWhenSignedByAnotherKey() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OTHER_PK, Digests.REVOKE_TYPEHASH, key, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.revokeWithSig(key, 0, T0, sig);
    }

    function test_revokeWithSig_revertsWhenNonceWrong() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OWNER_PK, Digests.REVOKE_TYPEHASH, key, 1, T0);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 0));
        validator.revokeWithSig(key, 1, T0, sig);
    }

    function test_revokeWithSig_revertsWhenSignatureExpired() public {
        _fundAndRegister();
        bytes memory sig = _actionSig(OWNER_PK, Digests.REVOKE_TYPEHASH, key, 0, T0 - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SignatureExpired.selector, T0 - 1));
        validator.revokeWithSig(key, 0, T0 - 1, sig);
    }

    // ================================================================ settle

    function test_settle_paysTheDeltaToThePayeeAndEmits() public {
        _fundAndRegister();
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key, payee, 7 * USDC_1, 7 * USDC_1);
        vm.prank(stranger); // anyone may settle
        uint256 paid = validator.settle(key, 7 * USDC_1, _voucher(KEY_PK, payee, 7 * USDC_1));
        vm.assertEq(paid, 7 * USDC_1, "paid");

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key, payee, 5 * USDC_1, 12 * USDC_1);
        paid = validator.settle(key, 12 * USDC_1, _voucher(KEY_PK, payee, 12 * USDC_1));
        vm.assertEq(paid, 5 * USDC_1, "second delta");

        vm.assertEq(usdc.balanceOf(payee), 12 * USDC_1, "payee");
        vm.assertEq(usdc.balanceOf(stranger), 0, "caller gets nothing");
        vm.assertEq(validator.escrowOf(owner), 988 * USDC_1, "escrow");
        vm.assertEq(_settled(key), 12 * USDC_1, "settled");
        vm.assertEq(usdc.balanceOf(address(validator)), 988 * USDC_1, "balance equals escrow");
    }

    function test_settle_acceptsExactlyTheLimit() public {
        _fundAndRegister();
        validator.settle(key, LIMIT, _voucher(KEY_PK, payee, LIMIT));
        vm.assertEq(usdc.balanceOf(payee), LIMIT, "payee");
    }

    function test_settle_acceptsExactlyTheWholeEscrow() public {
        _deposit(owner, 5);
        _register(owner, key, payee, LIMIT);
        validator.settle(key, 5, _voucher(KEY_PK, payee, 5));
        vm.assertEq(validator.escrowOf(owner), 0, "escrow drained exactly");
        vm.assertEq(usdc.balanceOf(payee), 5, "payee");
    }

    function test_settle_revertsForUnknownKey() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        validator.settle(key, 1, _voucher(KEY_PK, payee, 1));
    }

    function test_settle_revertsBeforeValidAfter() public {
        _deposit(owner, 10 * USDC_1);
        uint48 validAfter = u48(T0 + 1 hours);
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, validAfter, u48(T0 + 1 days));
        bytes memory sig = _voucher(KEY_PK, payee, 1);

        vm.warp(validAfter - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyNotYetValid.selector, key, validAfter));
        validator.settle(key, 1, sig);

        vm.warp(validAfter);
        validator.settle(key, 1, sig);
        vm.assertEq(usdc.balanceOf(payee), 1, "settles from validAfter on");
    }

    function test_settle_revertsWhenExpiredPastGrace() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 2);
        uint256 closesAt = T0 + LIFETIME + GRACE;
        vm.warp(closesAt);
        validator.settle(key, 1, _voucher(KEY_PK, payee, 1)); // the last second still settles
        vm.warp(closesAt + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, closesAt));
        validator.settle(key, 2, sig);
        vm.assertEq(usdc.balanceOf(payee), 1, "only the in-window voucher paid");
    }

    function test_settle_revertsWhenFrozenPastGrace() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        validator.settle(key, 1, _voucher(KEY_PK, payee, 1));
    }

    function test_settle_revertsWhenRevokedPastGrace() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.revoke(key);
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        validator.settle(key, 1, _voucher(KEY_PK, payee, 1));
    }

    function test_settle_revertsAboveLimit() public {
        _fundAndRegister();
        uint256 amount = uint256(LIMIT) + 1;
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, amount, LIMIT));
        validator.settle(key, amount, _voucher(KEY_PK, payee, amount));
    }

    function test_settle_revertsOnZeroVoucher() public {
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 0, 0));
        validator.settle(key, 0, _voucher(KEY_PK, payee, 0));
    }

    function test_settle_revertsOnSameOrLowerVoucher() public {
        _fundAndRegister();
        validator.settle(key, 9, _voucher(KEY_PK, payee, 9));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 9, 9));
        validator.settle(key, 9, _voucher(KEY_PK, payee, 9));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 8, 9));
        validator.settle(key, 8, _voucher(KEY_PK, payee, 8));
    }

    function test_settle_revertsWhenSignedByAnotherKey() public {
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 1, _voucher(OTHER_PK, key, payee, 1));
    }

    function test_settle_revertsWhenAmountDiffersFromSigned() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 2, sig);
    }

    function test_settle_revertsOnMalformedSignature() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 1);
        bytes memory short = new bytes(64);
        for (uint256 i; i < 64; ++i) {
            short[i] = sig[i];
        }
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 1, short);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 1, "");
        sig[64] = bytes1(uint8(29)); // invalid v
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        validator.settle(key, 1, sig);
    }

    function test_settle_revertsWhenEscrowTooSmall() public {
        _deposit(owner, 10);
        _register(owner, key, payee, LIMIT);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, 11, 10));
        validator.settle(key, 11, _voucher(KEY_PK, payee, 11));
    }

    // =========================================================== settleBatch

    function _claim(uint256 pk, uint256 amount) internal view returns (SessionKeyValidator.Claim memory c) {
        address k = vm.addr(pk);
        c = SessionKeyValidator.Claim(k, amount, _voucher(pk, validator.sessionKeyOf(k).payee, amount));
    }

    function _transfersOf(Vm.Log[] memory logs) internal view returns (uint256 n) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(usdc) && logs[i].topics[0] == TRANSFER_TOPIC) ++n;
        }
    }

    function test_settleBatch_revertsOnEmptyBatch() public {
        vm.expectRevert(SessionKeyValidator.EmptyBatch.selector);
        validator.settleBatch(new SessionKeyValidator.Claim[](0));
    }

    function test_settleBatch_severalKeysOnePayeeInOneTransfer() public {
        _fundAndRegister();
        _register(owner, key2, payee, LIMIT);
        _register(owner, key3, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = _claim(KEY2_PK, 2 * USDC_1);
        claims[2] = _claim(KEY3_PK, 3 * USDC_1);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key, payee, 1 * USDC_1, 1 * USDC_1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key2, payee, 2 * USDC_1, 2 * USDC_1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key3, payee, 3 * USDC_1, 3 * USDC_1);
        vm.recordLogs();
        vm.prank(relayer);
        uint256 total = validator.settleBatch(claims);

        vm.assertEq(total, 6 * USDC_1, "total");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 1, "one transfer for one payee");
        vm.assertEq(usdc.balanceOf(payee), 6 * USDC_1, "payee");
        vm.assertEq(validator.escrowOf(owner), 994 * USDC_1, "escrow");
        vm.assertEq(_settled(key), 1 * USDC_1, "key settled");
        vm.assertEq(_settled(key2), 2 * USDC_1, "key2 settled");
        vm.assertEq(_settled(key3), 3 * USDC_1, "key3 settled");
    }

    function test_settleBatch_mixedPayeesAndOwners() public {
        _fundAndRegister(); // key -> payee, owner
        _register(owner, key2, payee2, LIMIT); // key2 -> payee2, owner
        _deposit(stranger, 50 * USDC_1);
        _register(stranger, key3, payee, LIMIT); // key3 -> payee, stranger
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = _claim(KEY2_PK, 2 * USDC_1);
        claims[2] = _claim(KEY3_PK, 4 * USDC_1);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key, payee, 1 * USDC_1, 1 * USDC_1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(owner, key2, payee2, 2 * USDC_1, 2 * USDC_1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(stranger, key3, payee, 4 * USDC_1, 4 * USDC_1);
        vm.recordLogs();
        uint256 total = validator.settleBatch(claims);

        vm.assertEq(total, 7 * USDC_1, "total");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 3, "payee, payee2, payee: three runs");
        vm.assertEq(usdc.balanceOf(payee), 5 * USDC_1, "payee");
        vm.assertEq(usdc.balanceOf(payee2), 2 * USDC_1, "payee2");
        vm.assertEq(validator.escrowOf(owner), 997 * USDC_1, "owner escrow");
        vm.assertEq(validator.escrowOf(stranger), 46 * USDC_1, "stranger escrow");
        vm.assertEq(usdc.balanceOf(address(validator)), 1_043 * USDC_1, "balance equals escrows");
    }

    function test_settleBatch_sameKeyTwicePaysEachDelta() public {
        _fundAndRegister();
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claim(KEY_PK, 3 * USDC_1);
        claims[1] = _claim(KEY_PK, 5 * USDC_1);
        uint256 total = validator.settleBatch(claims);
        vm.assertEq(total, 5 * USDC_1, "total is the highest voucher");
        vm.assertEq(usdc.balanceOf(payee), 5 * USDC_1, "payee");
        vm.assertEq(_settled(key), 5 * USDC_1, "settled");
    }

    function test_settleBatch_isAllOrNothing() public {
        _fundAndRegister();
        _register(owner, key2, payee2, LIMIT);
        _register(owner, key3, payee, LIMIT);
        validator.settle(key3, 2, _voucher(KEY3_PK, payee, 2));

        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = _claim(KEY2_PK, 2 * USDC_1);
        claims[2] = _claim(KEY3_PK, 2); // already settled: fails the whole batch
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key3, 2, 2));
        validator.settleBatch(claims);

        vm.assertEq(_settled(key), 0, "key untouched");
        vm.assertEq(_settled(key2), 0, "key2 untouched");
        vm.assertEq(usdc.balanceOf(payee), 2, "payee only has the earlier settle");
        vm.assertEq(usdc.balanceOf(payee2), 0, "payee2 untouched");
        vm.assertEq(validator.escrowOf(owner), 1_000 * USDC_1 - 2, "escrow untouched");
    }

    function test_settleBatch_revertsWhenAnyClaimHasABadSignature() public {
        _fundAndRegister();
        _register(owner, key2, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = SessionKeyValidator.Claim(key2, 1 * USDC_1, _voucher(KEY_PK, key2, payee, 1 * USDC_1));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key2));
        validator.settleBatch(claims);
        vm.assertEq(usdc.balanceOf(payee), 0, "nothing paid");
    }

    function test_settleBatch_revertsForUnknownKey() public {
        _fundAndRegister();
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claim(KEY_PK, 1);
        claims[1] = SessionKeyValidator.Claim(key2, 1, _voucher(KEY2_PK, payee, 1));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key2));
        validator.settleBatch(claims);
    }

    function test_settleBatch_revertsWhenEscrowRunsOutMidway() public {
        _deposit(owner, 10);
        _register(owner, key, payee, LIMIT);
        _register(owner, key2, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claim(KEY_PK, 6);
        claims[1] = _claim(KEY2_PK, 6);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, 6, 4));
        validator.settleBatch(claims);
        vm.assertEq(validator.escrowOf(owner), 10, "escrow untouched");
    }

    // ===================================================== withdrawals

    function test_requestWithdrawal_recordsAndEmits() public {
        _deposit(owner, 100);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.WithdrawalRequested(owner, 60, u48(T0 + GRACE));
        vm.prank(owner);
        validator.requestWithdrawal(60);
        (uint208 amount, uint48 readyAt) = validator.withdrawalOf(owner);
        vm.assertEq(amount, 60, "amount");
        vm.assertEq(readyAt, T0 + GRACE, "readyAt");
        vm.assertEq(validator.escrowOf(owner), 100, "escrow stays until withdrawn");
    }

    function test_requestWithdrawal_replacesPendingRequestAndRestartsTheWait() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(60);
        vm.warp(T0 + 1 hours);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.WithdrawalRequested(owner, 30, u48(T0 + 1 hours + GRACE));
        vm.prank(owner);
        validator.requestWithdrawal(30);
        (uint208 amount, uint48 readyAt) = validator.withdrawalOf(owner);
        vm.assertEq(amount, 30, "amount replaced");
        vm.assertEq(readyAt, T0 + 1 hours + GRACE, "wait restarted");
    }

    function test_requestWithdrawal_revertsOnZeroAmount() public {
        _deposit(owner, 100);
        vm.expectRevert(SessionKeyValidator.ZeroAmount.selector);
        vm.prank(owner);
        validator.requestWithdrawal(0);
    }

    function test_requestWithdrawal_revertsAboveEscrow() public {
        _deposit(owner, 100);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InsufficientEscrow.selector, owner, 101, 100));
        vm.prank(owner);
        validator.requestWithdrawal(101);
    }

    function test_cancelWithdrawal_clearsAndEmits() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(100);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.WithdrawalCancelled(owner);
        vm.prank(owner);
        validator.cancelWithdrawal();
        (uint208 amount, uint48 readyAt) = validator.withdrawalOf(owner);
        vm.assertEq(amount, 0, "amount cleared");
        vm.assertEq(readyAt, 0, "readyAt cleared");
        vm.warp(T0 + GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner));
        vm.prank(owner);
        validator.withdraw();
    }

    function test_cancelWithdrawal_revertsWithoutPendingRequest() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner));
        vm.prank(owner);
        validator.cancelWithdrawal();
    }

    function test_withdraw_paysAfterGraceAndEmits() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(60);
        vm.warp(T0 + GRACE);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, 60);
        vm.prank(owner);
        uint256 amount = validator.withdraw();
        vm.assertEq(amount, 60, "returned amount");
        vm.assertEq(usdc.balanceOf(owner), 60, "owner got the tokens");
        vm.assertEq(validator.escrowOf(owner), 40, "escrow");
        vm.assertEq(usdc.balanceOf(address(validator)), 40, "balance equals escrow");
        (uint208 pending,) = validator.withdrawalOf(owner);
        vm.assertEq(pending, 0, "request consumed");
    }

    function test_withdraw_revertsBeforeReady() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(60);
        vm.warp(T0 + GRACE - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + GRACE)));
        vm.prank(owner);
        validator.withdraw();
    }

    function test_withdraw_revertsWithoutPendingRequest() public {
        _deposit(owner, 100);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner));
        vm.prank(owner);
        validator.withdraw();
    }

    function test_withdraw_revertsWhenRepeated() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(60);
        vm.warp(T0 + GRACE);
        vm.prank(owner);
        validator.withdraw();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner));
        vm.prank(owner);
        validator.withdraw();
        vm.assertEq(usdc.balanceOf(owner), 60, "paid once");
    }

    function test_withdraw_paysZeroWhenSettlementsTookEverything() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.requestWithdrawal(LIMIT);
        // Another key drains the rest of the escrow during the wait.
        _register(owner, key2, payee, type(uint128).max);
        validator.settle(key2, 1_000 * USDC_1, _voucher(KEY2_PK, payee, 1_000 * USDC_1));
        vm.warp(T0 + GRACE);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, 0);
        vm.prank(owner);
        uint256 amount = validator.withdraw();
        vm.assertEq(amount, 0, "nothing left");
        vm.assertEq(usdc.balanceOf(owner), 0, "owner got nothing");
    }

    // ================================================================= views

    function test_sessionKeyOf_unknownKeyIsAllZero() public view {
        SessionKeyValidator.SessionKey memory k = validator.sessionKeyOf(key);
        vm.assertEq(k.owner, address(0), "owner");
        vm.assertEq(k.payee, address(0), "payee");
        vm.assertEq(k.limit, 0, "limit");
        vm.assertEq(k.validUntil, 0, "validUntil");
    }

    function test_settleableUntil_zeroForUnknownKeyAndEarliestStopOtherwise() public {
        vm.assertEq(validator.settleableUntil(key), 0, "unknown");
        _fundAndRegister();
        vm.assertEq(validator.settleableUntil(key), T0 + LIFETIME + GRACE, "expiry");
        vm.warp(T0 + 5 hours);
        vm.prank(owner);
        validator.revoke(key);
        vm.assertEq(validator.settleableUntil(key), T0 + 5 hours + GRACE, "revocation");
    }

    function test_voucherDigest_matchesIndependentEip712() public view {
        vm.assertEq(
            validator.voucherDigest(key, payee, 123),
            Digests.voucher(_separator(address(validator)), key, payee, 123),
            "voucher digest"
        );
    }

    function test_registrationDigest_matchesIndependentEip712() public view {
        vm.assertEq(
            validator.registrationDigest(owner, key, payee, LIMIT, 1, 2, 3, 4),
            Digests.registration(_separator(address(validator)), owner, key, payee, LIMIT, 1, 2, 3, 4),
            "registration digest"
        );
    }

    function test_keyActionDigest_matchesIndependentEip712() public view {
        bytes32 sep = _separator(address(validator));
        vm.assertEq(
            validator.keyActionDigest(Digests.FREEZE_TYPEHASH, key, 1, 2),
            Digests.keyAction(sep, Digests.FREEZE_TYPEHASH, key, 1, 2),
            "freeze digest"
        );
        vm.assertEq(
            validator.keyActionDigest(Digests.UNFREEZE_TYPEHASH, key, 1, 2),
            Digests.keyAction(sep, Digests.UNFREEZE_TYPEHASH, key, 1, 2),
            "unfreeze digest"
        );
        vm.assertEq(
            validator.keyActionDigest(Digests.REVOKE_TYPEHASH, key, 1, 2),
            Digests.keyAction(sep, Digests.REVOKE_TYPEHASH, key, 1, 2),
            "revoke digest"
        );
    }

    function test_eip712Domain_describesTheDeployment() public view {
        (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        ) = validator.eip712Domain();
        vm.assertEq(bytes32(fields), bytes32(bytes1(0x0f)), "name, version, chainId, verifyingContract");
        vm.assertEq(name, NAME, "name");
        vm.assertEq(version, VERSION, "version");
        vm.assertEq(chainId, block.chainid, "chainId");
        vm.assertEq(verifyingContract, address(validator), "verifyingContract");
        vm.assertEq(salt, bytes32(0), "salt");
        vm.assertEq(extensions.length, 0, "extensions");
    }

    function test_domainSeparator_followsTheChainId() public {
        vm.chainId(137);
        vm.assertEq(validator.domainSeparator(), _separator(address(validator)), "chain 137");
        vm.assertTrue(
            validator.domainSeparator() != Digests.domainSeparator(NAME, VERSION, 31337, address(validator)),
            "differs from the deployment chain's"
        );
    }
}
