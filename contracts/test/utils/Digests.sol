// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SessionKeyValidator} from "../../src/SessionKeyValidator.sol";

/// @notice EIP-712 digests computed from first principles (type strings, name, version,
///         chain id, address), independently of the contract's own digest views, so the
///         tests check the contract instead of echoing it.
library Digests {
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address sessionKey,address payee,uint256 cumulativeAmount)");
    bytes32 internal constant REGISTER_TYPEHASH = keccak256(
        "RegisterSessionKey(address owner,address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil,uint256 nonce,uint256 deadline)"
    );
    bytes32 internal constant KEY_TERMS_TYPEHASH =
        keccak256("KeyTerms(address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil)");
    /// @dev EIP-712 `encodeType`: the primary type, then each referenced type (here one).
    bytes32 internal constant REGISTER_BATCH_TYPEHASH = keccak256(
        abi.encodePacked(
            "RegisterSessionKeys(address owner,KeyTerms[] keys,uint256 nonce,uint256 deadline)",
            "KeyTerms(address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil)"
        )
    );
    bytes32 internal constant FREEZE_TYPEHASH =
        keccak256("FreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 internal constant UNFREEZE_TYPEHASH =
        keccak256("UnfreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");
    bytes32 internal constant REVOKE_TYPEHASH =
        keccak256("RevokeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)");

    bytes32 internal constant SET_SETTLER_TYPEHASH =
        keccak256("SetSettler(address payee,address settler,bool allowed,uint256 nonce,uint256 deadline)");

    /// @dev secp256k1's group order.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    function domainSeparator(string memory name, string memory version, uint256 chainId, address verifyingContract)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(name)), keccak256(bytes(version)), chainId, verifyingContract)
        );
    }

    function typed(bytes32 separator, bytes32 structHash) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", separator, structHash));
    }

    function voucher(bytes32 separator, address sessionKey, address payee, uint256 cumulativeAmount)
        internal
        pure
        returns (bytes32)
    {
        return typed(separator, keccak256(abi.encode(VOUCHER_TYPEHASH, sessionKey, payee, cumulativeAmount)));
    }

    function registration(
        bytes32 separator,
        address owner,
        address sessionKey,
        address payee,
        uint128 limit,
        uint48 validAfter,
        uint48 validUntil,
        uint256 nonce,
        uint256 deadline
    ) internal pure returns (bytes32) {
        return typed(
            separator,
            keccak256(
                abi.encode(REGISTER_TYPEHASH, owner, sessionKey, payee, limit, validAfter, validUntil, nonce, deadline)
            )
        );
    }

    /// @dev An array of structs is encoded as keccak256 of its elements' struct hashes, concatenated.
    function registrations(
        bytes32 separator,
        address owner,
        SessionKeyValidator.KeyTerms[] memory keys,
        uint256 nonce,
        uint256 deadline
    ) internal pure returns (bytes32) {
        bytes32[] memory hashes = new bytes32[](keys.length);
        for (uint256 i; i < keys.length; ++i) {
            SessionKeyValidator.KeyTerms memory k = keys[i];
            hashes[i] = keccak256(
                abi.encode(KEY_TERMS_TYPEHASH, k.sessionKey, k.payee, k.limit, k.validAfter, k.validUntil)
            );
        }
        bytes32 keysHash = keccak256(abi.encodePacked(hashes));
        return typed(separator, keccak256(abi.encode(REGISTER_BATCH_TYPEHASH, owner, keysHash, nonce, deadline)));
    }

    function keyAction(bytes32 separator, bytes32 typehash, address sessionKey, uint256 nonce, uint256 deadline)
        internal
        pure
        returns (bytes32)
    {
        return typed(separator, keccak256(abi.encode(typehash, sessionKey, nonce, deadline)));
    }

    function setSettler(
        bytes32 separator,
        address payee,
        address settler,
        bool allowed,
        uint256 nonce,
        uint256 deadline
    ) internal pure returns (bytes32) {
        return typed(separator, keccak256(abi.encode(SET_SETTLER_TYPEHASH, payee, settler, allowed, nonce, deadline)));
    }
}
