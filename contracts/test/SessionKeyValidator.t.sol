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
    /// @dev A payee whose key signs `SetSettler` for a relayer (its key is kept cold).
    uint256 internal constant PAYEE_PK = 0xC01D;

    address internal coldPayee;
    address internal worker = address(0x3047); // a settlement worker

    function setUp() public override {
        super.setUp();
        coldPayee = vm.addr(PAYEE_PK);
        vm.label(coldPayee, "coldPayee");
        vm.label(worker, "worker");
        // The fixture's relayer is both payees' settlement worker.
        _allowRelayer(payee);
        _allowRelayer(payee2);
    }

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
        vm.assertEq(validator.SET_SETTLER_TYPEHASH(), Digests.SET_SETTLER_TYPEHASH, "setSettler");
        vm.assertEq(validator.KEY_TERMS_TYPEHASH(), Digests.KEY_TERMS_TYPEHASH, "keyTerms");
        vm.assertEq(validator.REGISTER_BATCH_TYPEHASH(), Digests.REGISTER_BATCH_TYPEHASH, "registerSessionKeys");
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

    function test_deposit_pullsTokensCreditsTheTabAndEmits() public {
        usdc.mint(owner, 50 * USDC_1);
        vm.prank(owner);
        usdc.approve(address(validator), 50 * USDC_1);

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Deposited(owner, payee, 30 * USDC_1);
        vm.prank(owner);
        validator.deposit(payee, 30 * USDC_1);

        (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(balance, 30 * USDC_1, "tab");
        vm.assertEq(withdrawing, 0, "no withdrawal");
        vm.assertEq(graceEndsAt, 0, "no grace");
        vm.assertEq(usdc.balanceOf(owner), 20 * USDC_1, "owner balance");
        vm.assertEq(usdc.balanceOf(address(validator)), 30 * USDC_1, "validator balance");
    }

    function test_deposit_accumulates() public {
        _deposit(owner, 10);
        _deposit(owner, 15);
        vm.assertEq(_tab(owner, payee), 25, "tab");
    }

    function test_deposit_opensOneTabPerPayee() public {
        _deposit(owner, payee, 10);
        _deposit(owner, payee2, 15);
        _deposit(stranger, payee, 7);
        vm.assertEq(_tab(owner, payee), 10, "owner / payee");
        vm.assertEq(_tab(owner, payee2), 15, "owner / payee2");
        vm.assertEq(_tab(stranger, payee), 7, "stranger / payee");
        vm.assertEq(_tab(stranger, payee2), 0, "stranger / payee2");
        vm.assertEq(_tab(payee, owner), 0, "no tab the other way round");
        vm.assertEq(usdc.balanceOf(address(validator)), 32, "balance equals the sum of tabs");
    }

    function test_deposit_revertsOnZeroAmount() public {
        vm.expectRevert(SessionKeyValidator.ZeroAmount.selector);
        vm.prank(owner);
        validator.deposit(payee, 0);
    }

    function test_deposit_revertsOnZeroPayee() public {
        usdc.mint(owner, 10);
        vm.prank(owner);
        usdc.approve(address(validator), 10);
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        vm.prank(owner);
        validator.deposit(address(0), 10);
    }

    function test_deposit_revertsWhenPayeeIsTheValidator() public {
        usdc.mint(owner, 10);
        vm.prank(owner);
        usdc.approve(address(validator), 10);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayee.selector, address(validator)));
        vm.prank(owner);
        validator.deposit(address(validator), 10);
    }

    function test_deposit_revertsWithoutAllowance() public {
        usdc.mint(owner, 10);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(validator), 0, 10)
        );
        vm.prank(owner);
        validator.deposit(payee, 10);
    }

    function test_deposit_creditsOnlyWhatAFeeOnTransferTokenDelivers() public {
        FeeOnTransferToken fee = new FeeOnTransferToken(100); // 1 %
        SessionKeyValidator v = new SessionKeyValidator(NAME, VERSION, IERC20(address(fee)), GRACE);
        fee.mint(owner, 1_000);
        vm.prank(owner);
        fee.approve(address(v), 1_000);

        vm.expectEmit(true, true, true, true, address(v));
        emit SessionKeyValidator.Deposited(owner, payee, 990);
        vm.prank(owner);
        v.deposit(payee, 1_000);

        (uint128 balance,,) = v.tabOf(owner, payee);
        vm.assertEq(balance, 990, "tab is what arrived");
        vm.assertEq(fee.balanceOf(address(v)), 990, "balance equals the tab");
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

    function _terms(address sessionKey, address to) internal view returns (SessionKeyValidator.KeyTerms memory) {
        return SessionKeyValidator.KeyTerms(sessionKey, to, LIMIT, u48(T0), u48(T0 + 1 days));
    }

    function test_registerSessionKeys_registersEveryKeyForTheCallerAndEmitsEach() public {
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](3);
        keys[0] = _terms(key, payee);
        keys[1] = _terms(key2, payee2);
        keys[2] = _terms(key3, payee);
        for (uint256 i; i < 3; ++i) {
            vm.expectEmit(true, true, true, true, address(validator));
            emit SessionKeyValidator.SessionKeyRegistered(
                owner, keys[i].sessionKey, keys[i].payee, LIMIT, u48(T0), u48(T0 + 1 days)
            );
        }
        vm.prank(owner);
        validator.registerSessionKeys(keys);
        for (uint256 i; i < 3; ++i) {
            SessionKeyValidator.SessionKey memory k = validator.sessionKeyOf(keys[i].sessionKey);
            vm.assertEq(k.owner, owner, "owner is the caller");
            vm.assertEq(k.payee, keys[i].payee, "payee");
            vm.assertEq(k.limit, LIMIT, "limit");
        }
    }

    function test_registerSessionKeys_revertsOnAnEmptyBatch() public {
        vm.expectRevert(SessionKeyValidator.EmptyBatch.selector);
        vm.prank(owner);
        validator.registerSessionKeys(new SessionKeyValidator.KeyTerms[](0));
    }

    function test_registerSessionKeys_isAllOrNothing() public {
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](3);
        keys[0] = _terms(key, payee);
        keys[1] = _terms(key2, payee);
        keys[2] = _terms(key3, payee);
        keys[2].limit = 0;
        vm.expectRevert(SessionKeyValidator.ZeroLimit.selector);
        vm.prank(owner);
        validator.registerSessionKeys(keys);
        vm.assertEq(validator.sessionKeyOf(key).owner, address(0), "the valid ones were not registered either");
        vm.assertEq(validator.sessionKeyOf(key2).owner, address(0), "nor the second");
    }

    function test_registerSessionKeys_refusesAKeyTwiceInOneBatchOrOneRegisteredBefore() public {
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](2);
        keys[0] = _terms(key, payee);
        keys[1] = _terms(key, payee2);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key));
        vm.prank(owner);
        validator.registerSessionKeys(keys);

        _register(stranger, key2, payee, LIMIT);
        keys[0] = _terms(key3, payee);
        keys[1] = _terms(key2, payee);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key2));
        vm.prank(owner);
        validator.registerSessionKeys(keys);
        vm.assertEq(validator.sessionKeyOf(key2).owner, stranger, "not taken over");
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

        // The wallet opens a tab with the payee, and the key's vouchers settle from it.
        usdc.mint(address(wallet), 10 * USDC_1);
        vm.startPrank(owner);
        wallet.execute(address(usdc), abi.encodeCall(usdc.approve, (address(validator), 10 * USDC_1)));
        wallet.execute(address(validator), abi.encodeCall(validator.deposit, (payee, 10 * USDC_1)));
        vm.stopPrank();
        _settle(key, 4 * USDC_1, _voucher(KEY_PK, payee, 4 * USDC_1));
        vm.assertEq(_tab(address(wallet), payee), 6 * USDC_1, "wallet's tab");
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

    // ========================================== registerSessionKeysWithSig

    function _three() internal view returns (SessionKeyValidator.KeyTerms[] memory keys) {
        keys = new SessionKeyValidator.KeyTerms[](3);
        keys[0] = _terms(key, payee);
        keys[1] = _terms(key2, payee2);
        keys[2] = _terms(key3, payee);
    }

    function test_registerSessionKeysWithSig_eoaOwnerViaRelayer() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        uint256 deadline = T0 + 1 hours;
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, deadline);

        for (uint256 i; i < 3; ++i) {
            vm.expectEmit(true, true, true, true, address(validator));
            emit SessionKeyValidator.SessionKeyRegistered(
                owner, keys[i].sessionKey, keys[i].payee, LIMIT, u48(T0), u48(T0 + 1 days)
            );
        }
        vm.prank(relayer);
        validator.registerSessionKeysWithSig(keys, owner, 0, deadline, sig);

        for (uint256 i; i < 3; ++i) {
            SessionKeyValidator.SessionKey memory k = validator.sessionKeyOf(keys[i].sessionKey);
            vm.assertEq(k.owner, owner, "owner is the signer, not the relayer");
            vm.assertEq(k.payee, keys[i].payee, "payee");
            vm.assertEq(k.limit, LIMIT, "limit");
            vm.assertEq(k.validUntil, u48(T0 + 1 days), "validUntil");
        }
        vm.assertEq(validator.nonces(owner), 1, "one nonce for the whole batch");
        vm.assertEq(validator.nonces(relayer), 0, "relayer nonce untouched");
    }

    function test_registerSessionKeysWithSig_digestIsTheEip712OfTheTypeString() public view {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        vm.assertEq(
            validator.registrationsDigest(owner, keys, 7, T0 + 1 hours),
            Digests.registrations(_separator(address(validator)), owner, keys, 7, T0 + 1 hours),
            "digest"
        );
    }

    /// A fixed point the Rust core is held to as well (`crates/core/src/eip712.rs`,
    /// `batch_registration_digest_matches_the_contract`): same domain, same three entries.
    function test_registerSessionKeysWithSig_pinnedDigest() public {
        vm.chainId(31337);
        uint160 ones = type(uint160).max / 0xff; // 0x0101…01: repeat a byte with `ones * byte`
        address at = address(ones * 0x42);
        vm.etch(at, address(validator).code); // the domain follows the address it runs at
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](3);
        uint128[3] memory limits = [uint128(25_000_000), 1, type(uint128).max];
        for (uint256 i; i < 3; ++i) {
            keys[i] = SessionKeyValidator.KeyTerms(
                address(ones * uint160(i + 1)),
                address(ones * 0xfe),
                limits[i],
                1_700_000_000,
                1_700_086_400
            );
        }
        address signer = address(ones * 0xaa);
        bytes32 digest = SessionKeyValidator(at).registrationsDigest(signer, keys, 7, 1_700_000_900);
        vm.assertEq(digest, Digests.registrations(_separator(at), signer, keys, 7, 1_700_000_900), "first principles");
        vm.assertEq(digest, PINNED_BATCH_DIGEST, "the digest the Rust core pins");
    }

    bytes32 internal constant PINNED_BATCH_DIGEST = 0x763cd19358f58d7b6ed7f8935654b1e11458db2514d5c752fc238efa53941c06;

    /// The contract hashes the array in assembly; the test library with `abi.encode`.
    function test_fuzz_registrationsDigest_matchesFirstPrinciples(
        uint8 count,
        uint256 seed,
        address who,
        uint256 nonce,
        uint256 deadline
    ) public view {
        uint256 n = bound(count, 1, 40);
        SessionKeyValidator.KeyTerms[] memory keys = new SessionKeyValidator.KeyTerms[](n);
        for (uint256 i; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            // forge-lint: disable-start(unsafe-typecast)
            keys[i] = SessionKeyValidator.KeyTerms(
                address(uint160(r)), address(uint160(r >> 96)), uint128(r >> 64), uint48(r >> 16), uint48(r >> 200)
            );
            // forge-lint: disable-end(unsafe-typecast)
        }
        vm.assertEq(
            validator.registrationsDigest(who, keys, nonce, deadline),
            Digests.registrations(_separator(address(validator)), who, keys, nonce, deadline),
            "digest"
        );
    }

    function test_registerSessionKeysWithSig_acceptsDeadlineEqualToNow() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, _registrationsSig(OWNER_PK, keys, 0, T0));
        vm.assertEq(validator.sessionKeyOf(key3).owner, owner, "registered");
    }

    function test_registerSessionKeysWithSig_revertsOnAnEmptyBatch() public {
        SessionKeyValidator.KeyTerms[] memory none = new SessionKeyValidator.KeyTerms[](0);
        bytes memory sig = _registrationsSig(OWNER_PK, none, 0, T0);
        vm.expectRevert(SessionKeyValidator.EmptyBatch.selector);
        validator.registerSessionKeysWithSig(none, owner, 0, T0, sig);
        vm.assertEq(validator.nonces(owner), 0, "no nonce spent");
    }

    function test_registerSessionKeysWithSig_revertsWhenSignatureExpired() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        uint256 deadline = T0 - 1;
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, deadline);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SignatureExpired.selector, deadline));
        validator.registerSessionKeysWithSig(keys, owner, 0, deadline, sig);
    }

    function test_registerSessionKeysWithSig_revertsOnZeroOwner() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, T0);
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        validator.registerSessionKeysWithSig(keys, address(0), 0, T0, sig);
    }

    function test_registerSessionKeysWithSig_revertsWhenSignedByAnotherKey() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig = _sign(OTHER_PK, Digests.registrations(_separator(address(validator)), owner, keys, 0, T0));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).owner, address(0), "nothing registered");
    }

    /// The signature covers every entry, in order: the relayer can drop, add, reorder or
    /// change none of them.
    function test_registerSessionKeysWithSig_revertsWhenTheRelayerChangesTheBatch() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, T0);
        bytes memory invalid = abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner);

        SessionKeyValidator.KeyTerms[] memory dropped = new SessionKeyValidator.KeyTerms[](2);
        (dropped[0], dropped[1]) = (keys[0], keys[1]);
        vm.expectRevert(invalid);
        validator.registerSessionKeysWithSig(dropped, owner, 0, T0, sig);

        SessionKeyValidator.KeyTerms[] memory added = new SessionKeyValidator.KeyTerms[](4);
        (added[0], added[1], added[2], added[3]) = (keys[0], keys[1], keys[2], _terms(stranger, payee));
        vm.expectRevert(invalid);
        validator.registerSessionKeysWithSig(added, owner, 0, T0, sig);

        SessionKeyValidator.KeyTerms[] memory swapped = _three();
        (swapped[0], swapped[2]) = (keys[2], keys[0]);
        vm.expectRevert(invalid);
        validator.registerSessionKeysWithSig(swapped, owner, 0, T0, sig);

        SessionKeyValidator.KeyTerms[] memory raised = _three();
        raised[1].limit = LIMIT + 1;
        vm.expectRevert(invalid);
        validator.registerSessionKeysWithSig(raised, owner, 0, T0, sig);

        SessionKeyValidator.KeyTerms[] memory redirected = _three();
        redirected[2].payee = stranger;
        vm.expectRevert(invalid);
        validator.registerSessionKeysWithSig(redirected, owner, 0, T0, sig);
        vm.assertEq(validator.nonces(owner), 0, "no nonce spent on failure");
    }

    /// A signed single registration is no batch of one (its own type), and the reverse.
    function test_registerSessionKeysWithSig_refusesASingleRegistrationSignature() public {
        SessionKeyValidator.KeyTerms[] memory one = new SessionKeyValidator.KeyTerms[](1);
        one[0] = _terms(key, payee);
        bytes memory single = _registrationSig(OWNER_PK, key, payee, LIMIT, u48(T0), u48(T0 + 1 days), 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeysWithSig(one, owner, 0, T0, single);

        bytes memory batch = _registrationsSig(OWNER_PK, one, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, owner));
        validator.registerSessionKeyWithSig(key, payee, LIMIT, u48(T0), u48(T0 + 1 days), owner, 0, T0, batch);
    }

    function test_registerSessionKeysWithSig_revertsWhenNonceReused() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, T0);
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, sig);

        // The same signature again (its keys now exist, but the nonce is checked first).
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, sig);

        // A fresh batch signed with the spent nonce.
        SessionKeyValidator.KeyTerms[] memory others = new SessionKeyValidator.KeyTerms[](1);
        others[0] = _terms(stranger, payee);
        bytes memory sig2 = _registrationsSig(OWNER_PK, others, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, owner, 1));
        validator.registerSessionKeysWithSig(others, owner, 0, T0, sig2);
    }

    function test_registerSessionKeysWithSig_isAllOrNothing() public {
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        keys[2].validAfter = keys[2].validUntil; // an empty window, last in the batch
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, T0);
        vm.expectRevert(
            abi.encodeWithSelector(
                SessionKeyValidator.InvalidValidityWindow.selector, keys[2].validAfter, keys[2].validUntil
            )
        );
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key).owner, address(0), "the valid ones were not registered either");
        vm.assertEq(validator.sessionKeyOf(key2).owner, address(0), "nor the second");
        vm.assertEq(validator.nonces(owner), 0, "the nonce is still unspent");
    }

    function test_registerSessionKeysWithSig_refusesAKeyRegisteredBefore() public {
        _register(stranger, key2, payee, LIMIT);
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig = _registrationsSig(OWNER_PK, keys, 0, T0);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SessionKeyExists.selector, key2));
        validator.registerSessionKeysWithSig(keys, owner, 0, T0, sig);
        vm.assertEq(validator.sessionKeyOf(key2).owner, stranger, "not taken over");
        vm.assertEq(validator.sessionKeyOf(key).owner, address(0), "nothing registered");
    }

    function test_registerSessionKeysWithSig_erc1271Owner() public {
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig =
            _sign(OWNER_PK, Digests.registrations(_separator(address(validator)), address(wallet), keys, 0, T0));
        vm.prank(relayer);
        validator.registerSessionKeysWithSig(keys, address(wallet), 0, T0, sig);
        for (uint256 i; i < 3; ++i) {
            vm.assertEq(validator.sessionKeyOf(keys[i].sessionKey).owner, address(wallet), "wallet owns the key");
        }
        vm.assertEq(validator.nonces(address(wallet)), 1, "wallet nonce spent");
    }

    function test_registerSessionKeysWithSig_revertsForErc1271OwnerWithWrongSigner() public {
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        SessionKeyValidator.KeyTerms[] memory keys = _three();
        bytes memory sig =
            _sign(OTHER_PK, Digests.registrations(_separator(address(validator)), address(wallet), keys, 0, T0));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidOwnerSignature.selector, address(wallet)));
        validator.registerSessionKeysWithSig(keys, address(wallet), 0, T0, sig);
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
        _settle(key, 3 * USDC_1, sig);
        vm.prank(owner);
        validator.unfreeze(key);
        _settle(key, 3 * USDC_1, sig);
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


    // ============================================================== settlers

    function test_setSettler_storesAndEmits() public {
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SettlerSet(payee, worker, true);
        vm.prank(payee);
        validator.setSettler(worker, true);
        vm.assertTrue(validator.isSettler(payee, worker), "authorised");
        vm.assertFalse(validator.isSettler(payee2, worker), "for the caller only");
        vm.assertFalse(validator.isSettler(worker, payee), "not the other way round");
    }

    function test_setSettler_authorisedSettlerSettles() public {
        _fundAndRegister();
        vm.prank(payee);
        validator.setSettler(worker, true);
        vm.prank(worker);
        validator.settle(key, 3 * USDC_1, _voucher(KEY_PK, payee, 3 * USDC_1));
        vm.assertEq(usdc.balanceOf(payee), 3 * USDC_1, "paid to the payee");
        vm.assertEq(usdc.balanceOf(worker), 0, "the settler gets nothing");
    }

    function test_setSettler_falseRemovesTheSettler() public {
        _fundAndRegister();
        vm.prank(payee);
        validator.setSettler(worker, true);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SettlerSet(payee, worker, false);
        vm.prank(payee);
        validator.setSettler(worker, false);
        vm.assertFalse(validator.isSettler(payee, worker), "removed");

        bytes memory sig = _voucher(KEY_PK, payee, 3 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, worker));
        vm.prank(worker);
        validator.settle(key, 3 * USDC_1, sig);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = SessionKeyValidator.Claim(key, 3 * USDC_1, sig);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, worker));
        vm.prank(worker);
        validator.settleBatch(payee, claims);
        vm.assertEq(_settled(key), 0, "nothing settled");
    }

    function test_setSettler_revertsOnZeroSettler() public {
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        vm.prank(payee);
        validator.setSettler(address(0), true);
    }

    function test_setSettler_ofAnotherPayeeCannotSettleForThisOne() public {
        _fundAndRegister();
        vm.prank(payee2);
        validator.setSettler(worker, true);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, worker));
        vm.prank(worker);
        validator.settle(key, 1, _voucher(KEY_PK, payee, 1));
    }

    function test_setSettlerWithSig_relayedAuthorisation() public {
        uint256 deadline = T0 + 1 hours;
        bytes memory sig = _settlerSig(PAYEE_PK, worker, true, 0, deadline);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SettlerSet(coldPayee, worker, true);
        vm.prank(relayer);
        validator.setSettlerWithSig(coldPayee, worker, true, 0, deadline, sig);
        vm.assertTrue(validator.isSettler(coldPayee, worker), "authorised");
        vm.assertEq(validator.nonces(coldPayee), 1, "payee nonce spent");
        vm.assertEq(validator.nonces(relayer), 0, "relayer nonce untouched");

        // The worker now settles what is owed to the cold payee.
        _deposit(owner, coldPayee, 10 * USDC_1);
        _register(owner, key, coldPayee, LIMIT);
        vm.prank(worker);
        validator.settle(key, 2 * USDC_1, _voucher(KEY_PK, coldPayee, 2 * USDC_1));
        vm.assertEq(usdc.balanceOf(coldPayee), 2 * USDC_1, "cold payee paid");
    }

    function test_setSettlerWithSig_removesASettler() public {
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0, _settlerSig(PAYEE_PK, worker, true, 0, T0));
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SettlerSet(coldPayee, worker, false);
        validator.setSettlerWithSig(coldPayee, worker, false, 1, T0, _settlerSig(PAYEE_PK, worker, false, 1, T0));
        vm.assertFalse(validator.isSettler(coldPayee, worker), "removed");
        vm.assertEq(validator.nonces(coldPayee), 2, "two nonces spent");
    }

    function test_setSettlerWithSig_revertsWhenNonceReplayed() public {
        bytes memory allow = _settlerSig(PAYEE_PK, worker, true, 0, T0 + 1 days);
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0 + 1 days, allow);
        // The same signature again…
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, coldPayee, 1));
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0 + 1 days, allow);
        // …and, after the payee removed the worker, replayed to bring it back.
        validator.setSettlerWithSig(coldPayee, worker, false, 1, T0, _settlerSig(PAYEE_PK, worker, false, 1, T0));
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, coldPayee, 2));
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0 + 1 days, allow);
        vm.assertFalse(validator.isSettler(coldPayee, worker), "stays removed");
    }

    function test_setSettlerWithSig_revertsOnFutureNonce() public {
        bytes memory sig = _settlerSig(PAYEE_PK, worker, true, 3, T0);
        vm.expectRevert(abi.encodeWithSelector(Nonces.InvalidAccountNonce.selector, coldPayee, 0));
        validator.setSettlerWithSig(coldPayee, worker, true, 3, T0, sig);
    }

    function test_setSettlerWithSig_acceptsDeadlineEqualToNow() public {
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0, _settlerSig(PAYEE_PK, worker, true, 0, T0));
        vm.assertTrue(validator.isSettler(coldPayee, worker), "authorised");
    }

    function test_setSettlerWithSig_revertsWhenSignatureExpired() public {
        bytes memory sig = _settlerSig(PAYEE_PK, worker, true, 0, T0);
        vm.warp(T0 + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SignatureExpired.selector, T0));
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0, sig);
        vm.assertFalse(validator.isSettler(coldPayee, worker), "not authorised");
    }

    function test_setSettlerWithSig_revertsWhenSignedByAnotherKey() public {
        // OTHER_PK signs the cold payee's authorisation.
        bytes memory sig =
            _sign(OTHER_PK, Digests.setSettler(_separator(address(validator)), coldPayee, worker, true, 0, T0));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayeeSignature.selector, coldPayee));
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0, sig);
        vm.assertFalse(validator.isSettler(coldPayee, worker), "not authorised");
    }

    function test_setSettlerWithSig_revertsWhenATermIsChanged() public {
        bytes memory sig = _settlerSig(PAYEE_PK, worker, false, 0, T0);
        // The relayer flips `allowed`…
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayeeSignature.selector, coldPayee));
        validator.setSettlerWithSig(coldPayee, worker, true, 0, T0, sig);
        // …swaps the settler…
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayeeSignature.selector, coldPayee));
        validator.setSettlerWithSig(coldPayee, stranger, false, 0, T0, sig);
        // …or presents it for another payee.
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidPayeeSignature.selector, payee));
        validator.setSettlerWithSig(payee, worker, false, 0, T0, sig);
        vm.assertEq(validator.nonces(coldPayee), 0, "no nonce spent on failure");
    }

    function test_setSettlerWithSig_revertsOnZeroPayee() public {
        bytes memory sig = _settlerSig(PAYEE_PK, worker, true, 0, T0);
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        validator.setSettlerWithSig(address(0), worker, true, 0, T0, sig);
    }

    function test_setSettlerWithSig_revertsOnZeroSettler() public {
        bytes memory sig = _settlerSig(PAYEE_PK, address(0), true, 0, T0);
        vm.expectRevert(SessionKeyValidator.ZeroAddress.selector);
        validator.setSettlerWithSig(coldPayee, address(0), true, 0, T0, sig);
    }

    function test_setSettlerWithSig_erc1271Payee() public {
        ERC1271Wallet wallet = new ERC1271Wallet(coldPayee);
        bytes memory sig =
            _sign(PAYEE_PK, Digests.setSettler(_separator(address(validator)), address(wallet), worker, true, 0, T0));
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.SettlerSet(address(wallet), worker, true);
        validator.setSettlerWithSig(address(wallet), worker, true, 0, T0, sig);
        vm.assertTrue(validator.isSettler(address(wallet), worker), "authorised for the wallet");
        vm.assertFalse(validator.isSettler(coldPayee, worker), "not for the wallet's signer");
        vm.assertEq(validator.nonces(address(wallet)), 1, "wallet nonce spent");
    }

    // ================================================================ settle

    function test_settle_paysTheDeltaToThePayeeAndEmits() public {
        _fundAndRegister();
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key, 7 * USDC_1, 7 * USDC_1);
        uint256 paid = _settle(key, 7 * USDC_1, _voucher(KEY_PK, payee, 7 * USDC_1));
        vm.assertEq(paid, 7 * USDC_1, "paid");

        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key, 5 * USDC_1, 12 * USDC_1);
        paid = _settle(key, 12 * USDC_1, _voucher(KEY_PK, payee, 12 * USDC_1));
        vm.assertEq(paid, 5 * USDC_1, "second delta");

        vm.assertEq(usdc.balanceOf(payee), 12 * USDC_1, "payee");
        vm.assertEq(usdc.balanceOf(relayer), 0, "the settler gets nothing");
        vm.assertEq(_tab(owner, payee), 988 * USDC_1, "tab");
        vm.assertEq(_settled(key), 12 * USDC_1, "settled");
        vm.assertEq(usdc.balanceOf(address(validator)), 988 * USDC_1, "balance equals the tab");
    }

    function test_settle_byThePayeeItself() public {
        _fundAndRegister();
        vm.prank(payee);
        uint256 paid = validator.settle(key, 7 * USDC_1, _voucher(KEY_PK, payee, 7 * USDC_1));
        vm.assertEq(paid, 7 * USDC_1, "paid");
        vm.assertEq(usdc.balanceOf(payee), 7 * USDC_1, "payee");
    }

    function test_settle_revertsForAStranger() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 7 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, stranger));
        vm.prank(stranger);
        validator.settle(key, 7 * USDC_1, sig);
        vm.assertEq(_settled(key), 0, "nothing settled");
    }

    function test_settle_revertsForTheSessionKeyItself() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 7 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, key));
        vm.prank(key);
        validator.settle(key, 7 * USDC_1, sig);
    }

    function test_settle_revertsForTheKeysOwner() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 7 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, owner));
        vm.prank(owner);
        validator.settle(key, 7 * USDC_1, sig);
    }

    function test_settle_revertsForAnotherPayee() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 7 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, payee2));
        vm.prank(payee2);
        validator.settle(key, 7 * USDC_1, sig);
    }

    function test_settle_revertsForUnknownKey() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        _settle(key, 1, _voucher(KEY_PK, payee, 1));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.UnknownSessionKey.selector, key));
        vm.prank(stranger);
        validator.settle(key, 1, _voucher(KEY_PK, payee, 1));
    }

    function test_settle_acceptsExactlyTheLimit() public {
        _fundAndRegister();
        _settle(key, LIMIT, _voucher(KEY_PK, payee, LIMIT));
        vm.assertEq(usdc.balanceOf(payee), LIMIT, "payee");
    }

    function test_settle_acceptsExactlyTheWholeTab() public {
        _deposit(owner, 5);
        _register(owner, key, payee, LIMIT);
        uint256 paid = _settle(key, 5, _voucher(KEY_PK, payee, 5));
        vm.assertEq(paid, 5, "paid in full");
        vm.assertEq(_tab(owner, payee), 0, "tab drained exactly");
        vm.assertEq(usdc.balanceOf(payee), 5, "payee");
    }

    function test_settle_shortTabPaysWhatItHolds() public {
        _deposit(owner, 25);
        _register(owner, key, payee, LIMIT);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key, 25, 25);
        uint256 paid = _settle(key, 30, _voucher(KEY_PK, payee, 30));
        vm.assertEq(paid, 25, "paid what the tab held");
        vm.assertEq(_settled(key), 25, "settled advanced by what was paid");
        vm.assertEq(_tab(owner, payee), 0, "tab empty");
        vm.assertEq(usdc.balanceOf(payee), 25, "payee");
        vm.assertEq(usdc.balanceOf(address(validator)), 0, "nothing left");
    }

    function test_settle_restOfAPartlyPaidVoucherStaysClaimable() public {
        _deposit(owner, 25);
        _register(owner, key, payee, LIMIT);
        bytes memory sig = _voucher(KEY_PK, payee, 30);
        _settle(key, 30, sig);

        _deposit(owner, 3);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key, 3, 28);
        vm.assertEq(_settle(key, 30, sig), 3, "the same voucher pays the top-up");

        _deposit(owner, 10);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(key, 2, 30);
        vm.assertEq(_settle(key, 30, sig), 2, "and then only what is still owed");
        vm.assertEq(_tab(owner, payee), 8, "the rest stays in the tab");
        vm.assertEq(usdc.balanceOf(payee), 30, "payee got the voucher in full");

        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 30, 30));
        _settle(key, 30, sig);
    }

    function test_settle_revertsOnEmptyTab() public {
        _deposit(owner, payee2, 1_000 * USDC_1); // a tab with another payee does not count
        _register(owner, key, payee, LIMIT);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.EmptyTab.selector, owner, payee));
        _settle(key, 1, _voucher(KEY_PK, payee, 1));
        vm.assertEq(_settled(key), 0, "nothing settled");
        vm.assertEq(_tab(owner, payee2), 1_000 * USDC_1, "the other tab untouched");
    }

    function test_settle_checksTheVoucherBeforeTheTab() public {
        _register(owner, key, payee, LIMIT); // no tab at all
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 1, _voucher(OTHER_PK, key, payee, 1));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, LIMIT + 1, LIMIT));
        _settle(key, LIMIT + 1, _voucher(KEY_PK, payee, LIMIT + 1));
    }

    function test_settle_drawsOnlyOnTheOwnersTabWithTheKeysPayee() public {
        _deposit(owner, payee, 100);
        _deposit(owner, payee2, 100);
        _deposit(stranger, payee, 100);
        _register(owner, key, payee, LIMIT);
        uint256 paid = _settle(key, 150, _voucher(KEY_PK, payee, 150));
        vm.assertEq(paid, 100, "no more than owner's tab with payee");
        vm.assertEq(_tab(owner, payee), 0, "owner / payee");
        vm.assertEq(_tab(owner, payee2), 100, "owner / payee2 untouched");
        vm.assertEq(_tab(stranger, payee), 100, "stranger / payee untouched");
    }

    function test_settle_drawsOnAPendingWithdrawal() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.requestWithdrawal(payee, 1_000 * USDC_1);
        _settle(key, 30 * USDC_1, _voucher(KEY_PK, payee, 30 * USDC_1));
        (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(balance, 970 * USDC_1, "balance");
        vm.assertEq(withdrawing, 1_000 * USDC_1, "request unchanged");
        vm.assertEq(graceEndsAt, T0 + GRACE, "grace unchanged");
    }

    function test_settle_revertsBeforeValidAfter() public {
        _deposit(owner, 10 * USDC_1);
        uint48 validAfter = u48(T0 + 1 hours);
        vm.prank(owner);
        validator.registerSessionKey(key, payee, LIMIT, validAfter, u48(T0 + 1 days));
        bytes memory sig = _voucher(KEY_PK, payee, 1);

        vm.warp(validAfter - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.KeyNotYetValid.selector, key, validAfter));
        _settle(key, 1, sig);

        vm.warp(validAfter);
        _settle(key, 1, sig);
        vm.assertEq(usdc.balanceOf(payee), 1, "settles from validAfter on");
    }

    function test_settle_revertsWhenExpiredPastGrace() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 2);
        uint256 closesAt = T0 + LIFETIME + GRACE;
        vm.warp(closesAt);
        _settle(key, 1, _voucher(KEY_PK, payee, 1)); // the last second still settles
        vm.warp(closesAt + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, closesAt));
        _settle(key, 2, sig);
        vm.assertEq(usdc.balanceOf(payee), 1, "only the in-window voucher paid");
    }

    function test_settle_revertsWhenFrozenPastGrace() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.freeze(key);
        vm.warp(T0 + GRACE);
        _settle(key, 1, _voucher(KEY_PK, payee, 1)); // the last second of grace
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        _settle(key, 2, _voucher(KEY_PK, payee, 2));
    }

    function test_settle_revertsWhenRevokedPastGrace() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.revoke(key);
        vm.warp(T0 + GRACE);
        _settle(key, 1, _voucher(KEY_PK, payee, 1)); // the last second of grace
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        _settle(key, 2, _voucher(KEY_PK, payee, 2));
    }

    function test_settle_revertsAboveLimit() public {
        _fundAndRegister();
        uint256 amount = uint256(LIMIT) + 1;
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.VoucherAboveLimit.selector, key, amount, LIMIT));
        _settle(key, amount, _voucher(KEY_PK, payee, amount));
    }

    function test_settle_revertsOnZeroVoucher() public {
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 0, 0));
        _settle(key, 0, _voucher(KEY_PK, payee, 0));
    }

    function test_settle_revertsOnSameOrLowerVoucher() public {
        _fundAndRegister();
        _settle(key, 9, _voucher(KEY_PK, payee, 9));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 9, 9));
        _settle(key, 9, _voucher(KEY_PK, payee, 9));
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NothingToSettle.selector, key, 8, 9));
        _settle(key, 8, _voucher(KEY_PK, payee, 8));
    }

    function test_settle_revertsWhenSignedByAnotherKey() public {
        _fundAndRegister();
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 1, _voucher(OTHER_PK, key, payee, 1));
    }

    function test_settle_revertsWhenAmountDiffersFromSigned() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 2, sig);
    }

    function test_settle_revertsOnMalformedSignature() public {
        _fundAndRegister();
        bytes memory sig = _voucher(KEY_PK, payee, 1);
        bytes memory short = new bytes(64);
        for (uint256 i; i < 64; ++i) {
            short[i] = sig[i];
        }
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 1, short);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 1, "");
        sig[64] = bytes1(uint8(29)); // invalid v
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InvalidVoucherSignature.selector, key));
        _settle(key, 1, sig);
    }

    // =========================================================== settleBatch

    function _claim(uint256 pk, uint256 amount) internal view returns (SessionKeyValidator.Claim memory c) {
        address k = vm.addr(pk);
        c = SessionKeyValidator.Claim(k, amount, _voucher(pk, validator.sessionKeyOf(k).payee, amount));
    }

    function _claimFor(uint256 pk, address to, uint256 amount)
        internal
        view
        returns (SessionKeyValidator.Claim memory)
    {
        return SessionKeyValidator.Claim(vm.addr(pk), amount, _voucher(pk, to, amount));
    }

    /// @dev Settles `claims` for `payee`, sent by `relayer`.
    function _batch(SessionKeyValidator.Claim[] memory claims) internal returns (uint256) {
        vm.prank(relayer);
        return validator.settleBatch(payee, claims);
    }

    function _transfersOf(Vm.Log[] memory logs) internal view returns (uint256 n) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(usdc) && logs[i].topics[0] == TRANSFER_TOPIC) ++n;
        }
    }

    function _expectSkip(address sessionKey, SessionKeyValidator.SkipReason reason) internal {
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.ClaimSkipped(sessionKey, reason);
    }

    function _expectSettled(address sessionKey, uint256 amount, uint256 settled) internal {
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Settled(sessionKey, amount, settled);
    }

    /// @dev A batch [key: 1 USDC, `bad`, key3: 3 USDC] for `payee`: `bad` is skipped for
    ///      `reason` and the two good claims are paid, in one transfer.
    function _assertBatchSkips(SessionKeyValidator.Claim memory bad, SessionKeyValidator.SkipReason reason)
        internal
    {
        uint256 payeeBefore = usdc.balanceOf(payee);
        uint256 tabBefore = _tab(owner, payee);
        uint256 badSettledBefore = _settled(bad.sessionKey);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = bad;
        claims[2] = _claim(KEY3_PK, 3 * USDC_1);

        _expectSettled(key, 1 * USDC_1, 1 * USDC_1);
        _expectSkip(bad.sessionKey, reason);
        _expectSettled(key3, 3 * USDC_1, 3 * USDC_1);
        vm.recordLogs();
        uint256 total = _batch(claims);

        vm.assertEq(total, 4 * USDC_1, "the good claims are paid");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 1, "in one transfer");
        vm.assertEq(usdc.balanceOf(payee) - payeeBefore, 4 * USDC_1, "payee");
        vm.assertEq(tabBefore - _tab(owner, payee), 4 * USDC_1, "tab");
        vm.assertEq(_settled(key), 1 * USDC_1, "key settled");
        vm.assertEq(_settled(key3), 3 * USDC_1, "key3 settled");
        vm.assertEq(_settled(bad.sessionKey), badSettledBefore, "the skipped key is untouched");
    }

    function test_settleBatch_revertsOnEmptyBatch() public {
        vm.expectRevert(SessionKeyValidator.EmptyBatch.selector);
        _batch(new SessionKeyValidator.Claim[](0));
    }

    function test_settleBatch_revertsForAnUnauthorisedCaller() public {
        _fundAndRegister();
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        address[4] memory callers = [stranger, key, owner, payee2];
        for (uint256 i; i < callers.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NotSettler.selector, payee, callers[i]));
            vm.prank(callers[i]);
            validator.settleBatch(payee, claims);
        }
        vm.assertEq(_settled(key), 0, "nothing settled");
    }

    function test_settleBatch_byThePayeeItself() public {
        _fundAndRegister();
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](1);
        claims[0] = _claim(KEY_PK, 2 * USDC_1);
        vm.prank(payee);
        vm.assertEq(validator.settleBatch(payee, claims), 2 * USDC_1, "total");
        vm.assertEq(usdc.balanceOf(payee), 2 * USDC_1, "payee");
    }

    function test_settleBatch_severalKeysOnePayeeInOneTransfer() public {
        _fundAndRegister();
        _register(owner, key2, payee, LIMIT);
        _register(owner, key3, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = _claim(KEY2_PK, 2 * USDC_1);
        claims[2] = _claim(KEY3_PK, 3 * USDC_1);

        _expectSettled(key, 1 * USDC_1, 1 * USDC_1);
        _expectSettled(key2, 2 * USDC_1, 2 * USDC_1);
        _expectSettled(key3, 3 * USDC_1, 3 * USDC_1);
        vm.recordLogs();
        uint256 total = _batch(claims);

        vm.assertEq(total, 6 * USDC_1, "total");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 1, "one transfer for one payee");
        vm.assertEq(usdc.balanceOf(payee), 6 * USDC_1, "payee");
        vm.assertEq(_tab(owner, payee), 994 * USDC_1, "tab");
        vm.assertEq(_settled(key), 1 * USDC_1, "key settled");
        vm.assertEq(_settled(key2), 2 * USDC_1, "key2 settled");
        vm.assertEq(_settled(key3), 3 * USDC_1, "key3 settled");
    }

    function test_settleBatch_severalOwnersOnePayee() public {
        _fundAndRegister(); // key -> payee, owner
        _deposit(stranger, 50 * USDC_1);
        _register(stranger, key3, payee, LIMIT); // key3 -> payee, stranger
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = _claim(KEY3_PK, 4 * USDC_1);
        vm.recordLogs();
        uint256 total = _batch(claims);

        vm.assertEq(total, 5 * USDC_1, "total");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 1, "one transfer");
        vm.assertEq(usdc.balanceOf(payee), 5 * USDC_1, "payee");
        vm.assertEq(_tab(owner, payee), 999 * USDC_1, "owner's tab paid key's claim only");
        vm.assertEq(_tab(stranger, payee), 46 * USDC_1, "stranger's tab paid key3's claim only");
        vm.assertEq(usdc.balanceOf(address(validator)), 1_045 * USDC_1, "balance equals the tabs");
    }

    function test_settleBatch_sameKeyTwicePaysEachDelta() public {
        _fundAndRegister();
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claim(KEY_PK, 3 * USDC_1);
        claims[1] = _claim(KEY_PK, 5 * USDC_1);
        _expectSettled(key, 3 * USDC_1, 3 * USDC_1);
        _expectSettled(key, 2 * USDC_1, 5 * USDC_1);
        uint256 total = _batch(claims);
        vm.assertEq(total, 5 * USDC_1, "total is the highest voucher");
        vm.assertEq(usdc.balanceOf(payee), 5 * USDC_1, "payee");
        vm.assertEq(_settled(key), 5 * USDC_1, "settled");
    }

    function test_settleBatch_skipsAnUnknownKey() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _assertBatchSkips(_claimFor(KEY2_PK, payee, 2 * USDC_1), SessionKeyValidator.SkipReason.UnknownKey);
    }

    function test_settleBatch_skipsAKeyOfAnotherPayee() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _deposit(owner, payee2, 100 * USDC_1);
        _register(owner, key2, payee2, LIMIT);
        _assertBatchSkips(_claim(KEY2_PK, 2 * USDC_1), SessionKeyValidator.SkipReason.WrongPayee);
        vm.assertEq(usdc.balanceOf(payee2), 0, "payee2 not paid through payee's batch");
        vm.assertEq(_tab(owner, payee2), 100 * USDC_1, "payee2's tab untouched");
    }

    function test_settleBatch_skipsAKeyNotYetValid() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        vm.prank(owner);
        validator.registerSessionKey(key2, payee, LIMIT, u48(T0 + 1 hours), u48(T0 + 1 days));
        _assertBatchSkips(_claim(KEY2_PK, 2 * USDC_1), SessionKeyValidator.SkipReason.NotYetValid);
    }

    function test_settleBatch_skipsAKeyPastItsWindow() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _register(owner, key2, payee, LIMIT);
        vm.prank(owner);
        validator.revoke(key2);
        vm.warp(T0 + GRACE + 1);
        _assertBatchSkips(_claim(KEY2_PK, 2 * USDC_1), SessionKeyValidator.SkipReason.WindowClosed);
    }

    function test_settleBatch_skipsAVoucherAboveTheLimit() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _register(owner, key2, payee, 5);
        _assertBatchSkips(_claim(KEY2_PK, 6), SessionKeyValidator.SkipReason.AboveLimit);
    }

    function test_settleBatch_skipsASettledVoucher() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _register(owner, key2, payee, LIMIT);
        _settle(key2, 2 * USDC_1, _voucher(KEY2_PK, payee, 2 * USDC_1));
        _assertBatchSkips(_claim(KEY2_PK, 2 * USDC_1), SessionKeyValidator.SkipReason.NothingToSettle);
    }

    function test_settleBatch_skipsABadSignature() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _register(owner, key2, payee, LIMIT);
        _assertBatchSkips(
            SessionKeyValidator.Claim(key2, 2 * USDC_1, _voucher(KEY_PK, key2, payee, 2 * USDC_1)),
            SessionKeyValidator.SkipReason.InvalidSignature
        );
    }

    function test_settleBatch_skipsAnEmptyTab() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        _deposit(stranger, payee2, 100 * USDC_1); // the stranger's only tab is with payee2
        _register(stranger, key2, payee, LIMIT);
        _assertBatchSkips(_claim(KEY2_PK, 2 * USDC_1), SessionKeyValidator.SkipReason.EmptyTab);
        vm.assertEq(_tab(stranger, payee2), 100 * USDC_1, "the stranger's other tab untouched");
    }

    /// One claim of every kind that cannot pay, between two that can.
    function test_settleBatch_everySkipReasonInOneBatchStillPaysTheGoodClaims() public {
        _fundAndRegister();
        _register(owner, key3, payee, LIMIT);
        uint256 base = 0xC1A1;
        address[8] memory bad;
        for (uint256 i; i < 8; ++i) {
            bad[i] = vm.addr(base + i);
        }
        // bad[0]: never registered.
        _register(owner, bad[1], payee2, LIMIT); // another payee's key
        vm.prank(owner);
        validator.registerSessionKey(bad[2], payee, LIMIT, u48(T0 + 3 * GRACE), u48(T0 + 4 * GRACE));
        _register(owner, bad[3], payee, LIMIT);
        vm.prank(owner);
        validator.revoke(bad[3]);
        _register(owner, bad[4], payee, 1);
        _register(owner, bad[5], payee, LIMIT);
        _settle(bad[5], 7, _voucher(base + 5, payee, 7));
        _register(owner, bad[6], payee, LIMIT);
        _register(stranger, bad[7], payee, LIMIT); // the stranger has no tab with payee
        vm.warp(T0 + GRACE + 1); // bad[3]'s window has closed

        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](10);
        claims[0] = _claim(KEY_PK, 1 * USDC_1);
        claims[1] = _claimFor(base, payee, 5);
        claims[2] = _claimFor(base + 1, payee2, 5);
        claims[3] = _claimFor(base + 2, payee, 5);
        claims[4] = _claimFor(base + 3, payee, 5);
        claims[5] = _claimFor(base + 4, payee, 5);
        claims[6] = _claimFor(base + 5, payee, 7);
        claims[7] = SessionKeyValidator.Claim(bad[6], 5, _voucher(base, bad[6], payee, 5));
        claims[8] = _claimFor(base + 7, payee, 5);
        claims[9] = _claim(KEY3_PK, 3 * USDC_1);

        _expectSettled(key, 1 * USDC_1, 1 * USDC_1);
        _expectSkip(bad[0], SessionKeyValidator.SkipReason.UnknownKey);
        _expectSkip(bad[1], SessionKeyValidator.SkipReason.WrongPayee);
        _expectSkip(bad[2], SessionKeyValidator.SkipReason.NotYetValid);
        _expectSkip(bad[3], SessionKeyValidator.SkipReason.WindowClosed);
        _expectSkip(bad[4], SessionKeyValidator.SkipReason.AboveLimit);
        _expectSkip(bad[5], SessionKeyValidator.SkipReason.NothingToSettle);
        _expectSkip(bad[6], SessionKeyValidator.SkipReason.InvalidSignature);
        _expectSkip(bad[7], SessionKeyValidator.SkipReason.EmptyTab);
        _expectSettled(key3, 3 * USDC_1, 3 * USDC_1);
        vm.recordLogs();
        uint256 total = _batch(claims);

        vm.assertEq(total, 4 * USDC_1, "total");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        vm.assertEq(_transfersOf(logs), 1, "one transfer");
        uint256 skipped;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == SessionKeyValidator.ClaimSkipped.selector) ++skipped;
        }
        vm.assertEq(skipped, 8, "eight skips, one per bad claim");
        vm.assertEq(usdc.balanceOf(payee), 4 * USDC_1 + 7, "payee: the good claims and the earlier settle");
        vm.assertEq(_settled(bad[5]), 7, "the settled key keeps its total");
        for (uint256 i; i < 8; ++i) {
            if (i != 5) vm.assertEq(_settled(bad[i]), 0, "a skipped key settles nothing");
        }
    }

    function test_settleBatch_allClaimsSkippedPaysNothingAndDoesNotRevert() public {
        _fundAndRegister();
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](2);
        claims[0] = _claimFor(KEY2_PK, payee, 1); // unknown
        claims[1] = _claim(KEY_PK, uint256(LIMIT) + 1); // above the limit
        _expectSkip(key2, SessionKeyValidator.SkipReason.UnknownKey);
        _expectSkip(key, SessionKeyValidator.SkipReason.AboveLimit);
        vm.recordLogs();
        uint256 total = _batch(claims);
        vm.assertEq(total, 0, "total");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 0, "no transfer");
        vm.assertEq(usdc.balanceOf(payee), 0, "payee");
        vm.assertEq(_tab(owner, payee), 1_000 * USDC_1, "tab");
    }

    function test_settleBatch_tabRunningOutMidwayPaysWhatItHolds() public {
        _deposit(owner, 10);
        _register(owner, key, payee, LIMIT);
        _register(owner, key2, payee, LIMIT);
        _register(owner, key3, payee, LIMIT);
        SessionKeyValidator.Claim[] memory claims = new SessionKeyValidator.Claim[](3);
        claims[0] = _claim(KEY_PK, 6);
        claims[1] = _claim(KEY2_PK, 6);
        claims[2] = _claim(KEY3_PK, 6);
        _expectSettled(key, 6, 6);
        _expectSettled(key2, 4, 4); // partial: the tab's last 4
        _expectSkip(key3, SessionKeyValidator.SkipReason.EmptyTab);
        uint256 total = _batch(claims);
        vm.assertEq(total, 10, "the whole tab");
        vm.assertEq(_tab(owner, payee), 0, "tab empty");
        vm.assertEq(_settled(key), 6, "key");
        vm.assertEq(_settled(key2), 4, "key2 partly");
        vm.assertEq(_settled(key3), 0, "key3 waits");
        vm.assertEq(usdc.balanceOf(payee), 10, "payee");
    }

    // ===================================================== withdrawals

    function test_requestWithdrawal_recordsAndEmits() public {
        _deposit(owner, 100);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.WithdrawalRequested(owner, payee, 60, u48(T0 + GRACE));
        vm.prank(owner);
        validator.requestWithdrawal(payee, 60);
        (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(withdrawing, 60, "amount");
        vm.assertEq(graceEndsAt, T0 + GRACE, "graceEndsAt");
        vm.assertEq(balance, 100, "the tab keeps it until withdrawn");
    }

    function test_requestWithdrawal_acceptsTheWholeTab() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 100);
        (, uint80 withdrawing,) = validator.tabOf(owner, payee);
        vm.assertEq(withdrawing, 100, "amount");
    }

    function test_requestWithdrawal_replacesPendingRequestAndRestartsTheWait() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 60);
        vm.warp(T0 + 1 hours);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.WithdrawalRequested(owner, payee, 30, u48(T0 + 1 hours + GRACE));
        vm.prank(owner);
        validator.requestWithdrawal(payee, 30);
        (, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(withdrawing, 30, "amount replaced");
        vm.assertEq(graceEndsAt, T0 + 1 hours + GRACE, "wait restarted");
    }

    function test_requestWithdrawal_isPerTab() public {
        _deposit(owner, payee, 100);
        _deposit(owner, payee2, 50);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 60);
        (uint128 balance2, uint80 withdrawing2, uint48 graceEndsAt2) = validator.tabOf(owner, payee2);
        vm.assertEq(balance2, 50, "other tab's balance");
        vm.assertEq(withdrawing2, 0, "other tab has no request");
        vm.assertEq(graceEndsAt2, 0, "other tab has no grace");
    }

    function test_requestWithdrawal_revertsOnZeroAmount() public {
        _deposit(owner, 100);
        vm.expectRevert(SessionKeyValidator.ZeroAmount.selector);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 0);
    }

    function test_requestWithdrawal_revertsAboveTheTab() public {
        _deposit(owner, 100);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InsufficientTab.selector, owner, payee, 101, 100));
        vm.prank(owner);
        validator.requestWithdrawal(payee, 101);
    }

    function test_requestWithdrawal_countsOnlyTheTabWithThatPayee() public {
        _deposit(owner, payee, 100);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.InsufficientTab.selector, owner, payee2, 1, 0));
        vm.prank(owner);
        validator.requestWithdrawal(payee2, 1);
    }

    function test_cancelWithdrawal_clearsAndEmits() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 100);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.WithdrawalCancelled(owner, payee);
        vm.prank(owner);
        validator.cancelWithdrawal(payee);
        (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(balance, 100, "balance kept");
        vm.assertEq(withdrawing, 0, "amount cleared");
        vm.assertEq(graceEndsAt, 0, "graceEndsAt cleared");
        vm.warp(T0 + GRACE + 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner, payee));
        vm.prank(owner);
        validator.withdraw(payee);
    }

    function test_cancelWithdrawal_revertsWithoutPendingRequest() public {
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner, payee));
        vm.prank(owner);
        validator.cancelWithdrawal(payee);
    }

    function test_cancelWithdrawal_onlyTouchesThatTab() public {
        _deposit(owner, payee, 100);
        _deposit(owner, payee2, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 40);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner, payee2));
        vm.prank(owner);
        validator.cancelWithdrawal(payee2);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, stranger, payee));
        validator.cancelWithdrawal(payee);
        (, uint80 withdrawing,) = validator.tabOf(owner, payee);
        vm.assertEq(withdrawing, 40, "the request stands");
    }

    function test_withdraw_paysStrictlyAfterGraceAndEmits() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 60);
        vm.warp(T0 + GRACE + 1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, payee, 60);
        vm.prank(owner);
        uint256 amount = validator.withdraw(payee);
        vm.assertEq(amount, 60, "returned amount");
        vm.assertEq(usdc.balanceOf(owner), 60, "owner got the tokens");
        (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(balance, 40, "tab");
        vm.assertEq(withdrawing, 0, "request consumed");
        vm.assertEq(graceEndsAt, 0, "grace cleared");
        vm.assertEq(usdc.balanceOf(address(validator)), 40, "balance equals the tab");
    }

    function test_withdraw_revertsUpToAndIncludingGraceEndsAt() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 60);
        uint48 graceEndsAt = u48(T0 + GRACE);
        vm.warp(graceEndsAt - 1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, graceEndsAt));
        vm.prank(owner);
        validator.withdraw(payee);
        vm.warp(graceEndsAt); // the payee's last second
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, graceEndsAt));
        vm.prank(owner);
        validator.withdraw(payee);
        vm.warp(graceEndsAt + 1);
        vm.prank(owner);
        vm.assertEq(validator.withdraw(payee), 60, "the next second it pays");
    }

    function test_withdraw_andSettleMeetAtGraceEndsAtWithoutOverlap() public {
        _fundAndRegister();
        bytes memory owed = _voucher(KEY_PK, payee, 30 * USDC_1);
        vm.startPrank(owner);
        validator.freeze(key); // stops at T0: settleable until T0 + GRACE
        validator.requestWithdrawal(payee, 1_000 * USDC_1); // graceEndsAt = T0 + GRACE
        vm.stopPrank();
        vm.assertEq(validator.settleableUntil(key), T0 + GRACE, "settle window");

        vm.warp(T0 + GRACE);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.WithdrawalNotReady.selector, u48(T0 + GRACE)));
        vm.prank(owner);
        validator.withdraw(payee);
        vm.assertEq(_settle(key, 30 * USDC_1, owed), 30 * USDC_1, "settle: yes");

        vm.warp(T0 + GRACE + 1);
        bytes memory late = _voucher(KEY_PK, payee, 31 * USDC_1);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.SettlementWindowClosed.selector, key, T0 + GRACE));
        _settle(key, 31 * USDC_1, late);
        vm.prank(owner);
        vm.assertEq(validator.withdraw(payee), 970 * USDC_1, "withdraw: yes");
    }

    function test_withdraw_revertsWithoutPendingRequest() public {
        _deposit(owner, 100);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner, payee));
        vm.prank(owner);
        validator.withdraw(payee);
    }

    function test_withdraw_revertsWhenRepeated() public {
        _deposit(owner, 100);
        vm.prank(owner);
        validator.requestWithdrawal(payee, 60);
        vm.warp(T0 + GRACE + 1);
        vm.prank(owner);
        validator.withdraw(payee);
        vm.expectRevert(abi.encodeWithSelector(SessionKeyValidator.NoPendingWithdrawal.selector, owner, payee));
        vm.prank(owner);
        validator.withdraw(payee);
        vm.assertEq(usdc.balanceOf(owner), 60, "paid once");
    }

    function test_withdraw_paysWhatIsLeftAfterSettlements() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.requestWithdrawal(payee, 995 * USDC_1);
        _settle(key, 10 * USDC_1, _voucher(KEY_PK, payee, 10 * USDC_1));
        vm.warp(T0 + GRACE + 1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, payee, 990 * USDC_1);
        vm.prank(owner);
        vm.assertEq(validator.withdraw(payee), 990 * USDC_1, "min(requested, balance)");
        vm.assertEq(_tab(owner, payee), 0, "tab empty");
    }

    function test_withdraw_paysZeroWhenSettlementsTookEverything() public {
        _fundAndRegister();
        vm.prank(owner);
        validator.requestWithdrawal(payee, LIMIT);
        // Another key drains the rest of the tab during the wait.
        _register(owner, key2, payee, type(uint128).max);
        _settle(key2, 1_000 * USDC_1, _voucher(KEY2_PK, payee, 1_000 * USDC_1));
        vm.warp(T0 + GRACE + 1);
        vm.expectEmit(true, true, true, true, address(validator));
        emit SessionKeyValidator.Withdrawn(owner, payee, 0);
        vm.recordLogs();
        vm.prank(owner);
        uint256 amount = validator.withdraw(payee);
        vm.assertEq(amount, 0, "nothing left");
        vm.assertEq(_transfersOf(vm.getRecordedLogs()), 0, "no transfer");
        vm.assertEq(usdc.balanceOf(owner), 0, "owner got nothing");
        (, uint80 withdrawing,) = validator.tabOf(owner, payee);
        vm.assertEq(withdrawing, 0, "request consumed");
    }

    function test_withdraw_fromOneTabLeavesTheOthers() public {
        _deposit(owner, payee, 100);
        _deposit(owner, payee2, 100);
        vm.startPrank(owner);
        validator.requestWithdrawal(payee, 100);
        validator.requestWithdrawal(payee2, 30);
        vm.stopPrank();
        vm.warp(T0 + GRACE + 1);
        vm.prank(owner);
        validator.withdraw(payee);
        vm.assertEq(_tab(owner, payee), 0, "emptied");
        (uint128 balance2, uint80 withdrawing2, uint48 graceEndsAt2) = validator.tabOf(owner, payee2);
        vm.assertEq(balance2, 100, "other tab's balance");
        vm.assertEq(withdrawing2, 30, "other tab's request stands");
        vm.assertEq(graceEndsAt2, T0 + GRACE, "other tab's grace");
    }

    // ================================================================= views

    function test_tabOf_unknownTabIsAllZero() public view {
        (uint128 balance, uint80 withdrawing, uint48 graceEndsAt) = validator.tabOf(owner, payee);
        vm.assertEq(balance, 0, "balance");
        vm.assertEq(withdrawing, 0, "withdrawing");
        vm.assertEq(graceEndsAt, 0, "graceEndsAt");
    }

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

    function test_settlerDigest_matchesIndependentEip712() public view {
        vm.assertEq(
            validator.settlerDigest(payee, relayer, true, 3, 4),
            Digests.setSettler(_separator(address(validator)), payee, relayer, true, 3, 4),
            "setSettler digest"
        );
        vm.assertTrue(
            validator.settlerDigest(payee, relayer, true, 3, 4) != validator.settlerDigest(payee, relayer, false, 3, 4),
            "allowed is signed"
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
