//! The typed messages `SessionKeyValidator` verifies, and their EIP-712 digests.
//!
//! Every signed action has its own type, so no signature serves two purposes: a registration
//! signature can never pass as a voucher, nor a freeze as an unfreeze. The digests here must
//! equal the contract's; `testdata/vectors/voucher-eip712.json` (made with eth-account) and the
//! forge suite check both sides against the same vectors.

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{Eip712Domain, SolStruct};

alloy_sol_types::sol! {
    /// A cumulative promise: `sessionKey` owes `payee` `cumulativeAmount` base units in total.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Voucher {
        address sessionKey;
        address payee;
        uint256 cumulativeAmount;
    }

    /// The owner's consent to register a session key, relayed by someone else.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct RegisterSessionKey {
        address owner;
        address sessionKey;
        address payee;
        uint128 limit;
        uint48 validAfter;
        uint48 validUntil;
        uint256 nonce;
        uint256 deadline;
    }

    /// One key's terms inside a [`RegisterSessionKeys`] (the contract's `KeyTerms`).
    #[derive(Debug, Default, PartialEq, Eq)]
    struct KeyTerms {
        address sessionKey;
        address payee;
        uint128 limit;
        uint48 validAfter;
        uint48 validUntil;
    }

    /// The owner's consent to register every key of `keys`, in that order, in one relayed
    /// transaction: all or nothing, one nonce for the batch. Its own type, so neither a single
    /// registration nor a batch signature can stand in for the other.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct RegisterSessionKeys {
        address owner;
        KeyTerms[] keys;
        uint256 nonce;
        uint256 deadline;
    }

    /// The owner's consent to freeze a key, relayed.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct FreezeSessionKey {
        address sessionKey;
        uint256 nonce;
        uint256 deadline;
    }

    /// The owner's consent to lift a freeze, relayed.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct UnfreezeSessionKey {
        address sessionKey;
        uint256 nonce;
        uint256 deadline;
    }

    /// The owner's consent to revoke a key for good, relayed.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct RevokeSessionKey {
        address sessionKey;
        uint256 nonce;
        uint256 deadline;
    }

    /// The payee's consent to let `settler` settle its vouchers (or to stop it), relayed: a
    /// payee's key is often kept cold.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct SetSettler {
        address payee;
        address settler;
        bool allowed;
        uint256 nonce;
        uint256 deadline;
    }
}

/// The EIP-712 name the contract is deployed with by opentab.
pub const DOMAIN_NAME: &str = "opentab";
/// The EIP-712 version the contract is deployed with by opentab.
pub const DOMAIN_VERSION: &str = "1";

/// One deployment of `SessionKeyValidator`: its EIP-712 domain, with the separator computed once.
///
/// Hashing a voucher against a precomputed separator costs two Keccak rounds; this is what the
/// gateway holds on its hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractDomain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: Address,
    separator: B256,
}

impl ContractDomain {
    /// The domain of a validator deployed at `verifying_contract` on `chain_id` with `name`/`version`.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        chain_id: u64,
        verifying_contract: Address,
    ) -> Self {
        let (name, version) = (name.into(), version.into());
        let separator = Eip712Domain::new(
            Some(name.clone().into()),
            Some(version.clone().into()),
            Some(U256::from(chain_id)),
            Some(verifying_contract),
            None,
        )
        .separator();
        Self { name, version, chain_id, verifying_contract, separator }
    }

    /// The domain of a validator deployed by opentab (name [`DOMAIN_NAME`], version [`DOMAIN_VERSION`]).
    pub fn opentab(chain_id: u64, verifying_contract: Address) -> Self {
        Self::new(DOMAIN_NAME, DOMAIN_VERSION, chain_id, verifying_contract)
    }

    /// EIP-712 `name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// EIP-712 `version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The chain id the domain binds signatures to.
    pub const fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The validator contract the domain binds signatures to.
    pub const fn verifying_contract(&self) -> Address {
        self.verifying_contract
    }

    /// `keccak256(abi.encode(EIP712Domain typehash, name, version, chainId, verifyingContract))`.
    pub const fn separator(&self) -> B256 {
        self.separator
    }

    /// The digest a signer signs for `message`: `keccak256(0x1901 || separator || hashStruct(message))`.
    pub fn digest<T: SolStruct>(&self, message: &T) -> B256 {
        let mut buf = [0u8; 66];
        buf[0] = 0x19;
        buf[1] = 0x01;
        buf[2..34].copy_from_slice(self.separator.as_slice());
        buf[34..].copy_from_slice(message.eip712_hash_struct().as_slice());
        keccak256(buf)
    }
}

impl Voucher {
    /// A voucher for `cumulative_amount` base units in total from `session_key` to `payee`.
    pub fn new(session_key: Address, payee: Address, cumulative_amount: U256) -> Self {
        Self { sessionKey: session_key, payee, cumulativeAmount: cumulative_amount }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::hex;

    #[test]
    fn type_strings_match_the_contract() {
        assert_eq!(Voucher::eip712_encode_type(), "Voucher(address sessionKey,address payee,uint256 cumulativeAmount)");
        assert_eq!(
            RegisterSessionKey::eip712_encode_type(),
            "RegisterSessionKey(address owner,address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil,uint256 nonce,uint256 deadline)"
        );
        assert_eq!(
            FreezeSessionKey::eip712_encode_type(),
            "FreezeSessionKey(address sessionKey,uint256 nonce,uint256 deadline)"
        );
    }

    #[test]
    fn batch_registration_type_string_names_its_entry_type() {
        assert_eq!(
            RegisterSessionKeys::eip712_encode_type(),
            "RegisterSessionKeys(address owner,KeyTerms[] keys,uint256 nonce,uint256 deadline)\
             KeyTerms(address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil)"
        );
    }

    fn batch() -> RegisterSessionKeys {
        let terms = |byte: u8, limit: u128| KeyTerms {
            sessionKey: Address::repeat_byte(byte),
            payee: Address::repeat_byte(0xfe),
            limit,
            validAfter: alloy_primitives::Uint::from(1_700_000_000u64),
            validUntil: alloy_primitives::Uint::from(1_700_086_400u64),
        };
        RegisterSessionKeys {
            owner: Address::repeat_byte(0xaa),
            keys: vec![terms(1, 25_000_000), terms(2, 1), terms(3, u128::MAX)],
            nonce: U256::from(7),
            deadline: U256::from(1_700_000_900u64),
        }
    }

    /// EIP-712 by hand: an array of structs is keccak256 of its elements' struct hashes, each
    /// `keccak256(typehash ‖ fields as words)`.
    #[test]
    fn batch_registration_digest_is_the_standard_array_of_structs_encoding() {
        let domain = ContractDomain::opentab(31337, Address::repeat_byte(0x42));
        let m = batch();
        let word = |bytes: &[u8]| {
            let mut w = [0u8; 32];
            w[32 - bytes.len()..].copy_from_slice(bytes);
            w
        };
        let entry_typehash =
            keccak256("KeyTerms(address sessionKey,address payee,uint128 limit,uint48 validAfter,uint48 validUntil)");
        let mut entries = Vec::new();
        for k in &m.keys {
            let mut enc = entry_typehash.to_vec();
            enc.extend(word(k.sessionKey.as_slice()));
            enc.extend(word(k.payee.as_slice()));
            enc.extend(word(&k.limit.to_be_bytes()));
            enc.extend(word(&k.validAfter.to::<u64>().to_be_bytes()));
            enc.extend(word(&k.validUntil.to::<u64>().to_be_bytes()));
            entries.extend(keccak256(enc));
        }
        let mut enc = keccak256(RegisterSessionKeys::eip712_encode_type().as_bytes()).to_vec();
        enc.extend(word(m.owner.as_slice()));
        enc.extend(keccak256(entries));
        enc.extend(m.nonce.to_be_bytes::<32>());
        enc.extend(m.deadline.to_be_bytes::<32>());
        let mut typed = vec![0x19, 0x01];
        typed.extend(domain.separator());
        typed.extend(keccak256(enc));
        assert_eq!(domain.digest(&m), keccak256(typed));
    }

    /// The same batch, digested by the contract's `registrationsDigest` (forge test
    /// `test_registerSessionKeysWithSig_pinnedDigest`, same domain and terms): a fixed point
    /// both sides are held to. `crates/chain/tests` also compares the two live on anvil.
    #[test]
    fn batch_registration_digest_matches_the_contract() {
        let domain = ContractDomain::opentab(31337, Address::repeat_byte(0x42));
        assert_eq!(domain.digest(&batch()), BATCH_DIGEST_FROM_THE_CONTRACT);
    }

    const BATCH_DIGEST_FROM_THE_CONTRACT: B256 =
        alloy_primitives::b256!("763cd19358f58d7b6ed7f8935654b1e11458db2514d5c752fc238efa53941c06");

    #[test]
    fn a_batch_digest_depends_on_every_entry_and_their_order() {
        let domain = ContractDomain::opentab(31337, Address::repeat_byte(0x42));
        let m = batch();
        let mut reordered = batch();
        reordered.keys.swap(0, 2);
        let mut dropped = batch();
        dropped.keys.pop();
        let mut raised = batch();
        raised.keys[1].limit += 1;
        for other in [reordered, dropped, raised] {
            assert_ne!(domain.digest(&m), domain.digest(&other));
        }
    }

    #[test]
    fn actions_never_share_a_digest() {
        let domain = ContractDomain::opentab(31337, Address::repeat_byte(0x11));
        let key = Address::repeat_byte(0x22);
        let freeze = domain.digest(&FreezeSessionKey { sessionKey: key, nonce: U256::ZERO, deadline: U256::MAX });
        let unfreeze = domain.digest(&UnfreezeSessionKey { sessionKey: key, nonce: U256::ZERO, deadline: U256::MAX });
        let revoke = domain.digest(&RevokeSessionKey { sessionKey: key, nonce: U256::ZERO, deadline: U256::MAX });
        assert_ne!(freeze, unfreeze);
        assert_ne!(freeze, revoke);
        assert_ne!(unfreeze, revoke);
    }

    #[test]
    fn digest_matches_alloy_signing_hash() {
        let domain = ContractDomain::new("opentab", "2", 137, Address::repeat_byte(0x42));
        let voucher = Voucher::new(Address::repeat_byte(1), Address::repeat_byte(2), U256::from(5));
        let expected = voucher.eip712_signing_hash(&Eip712Domain::new(
            Some("opentab".into()),
            Some("2".into()),
            Some(U256::from(137)),
            Some(Address::repeat_byte(0x42)),
            None,
        ));
        assert_eq!(domain.digest(&voucher), expected);
        assert_ne!(hex::encode(expected), hex::encode(B256::ZERO));
    }
}
