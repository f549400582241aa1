//! The shared voucher vectors (made with eth-account, independent of opentab): every
//! separator, struct hash and digest must match, and every signature must recover its signer.
//! The forge suite checks the contract against the same file.

use alloy_sol_types::SolStruct;
use opentab_core::{Address, B256, ContractDomain, Signature, SigningKey, U256, Voucher};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(rename = "typeString")]
    type_string: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    domain: Domain,
    message: Message,
    domain_separator: B256,
    struct_hash: B256,
    digest: B256,
    signer_private_key: B256,
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Domain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: Address,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    session_key: Address,
    payee: Address,
    cumulative_amount: String,
}

fn vectors() -> Result<File, Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/voucher-eip712.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[test]
fn every_vector_matches_and_recovers() -> Result<(), Box<dyn std::error::Error>> {
    let file = vectors()?;
    assert_eq!(file.type_string, Voucher::eip712_encode_type());
    assert_eq!(file.cases.len(), 20, "the shared file holds 20 vectors");
    for (i, case) in file.cases.iter().enumerate() {
        let d = &case.domain;
        let domain = ContractDomain::new(d.name.clone(), d.version.clone(), d.chain_id, d.verifying_contract);
        let amount = U256::from_str_radix(&case.message.cumulative_amount, 10)?;
        let voucher = Voucher::new(case.message.session_key, case.message.payee, amount);

        assert_eq!(domain.separator(), case.domain_separator, "case {i}: domain separator");
        assert_eq!(voucher.eip712_hash_struct(), case.struct_hash, "case {i}: struct hash");
        assert_eq!(domain.digest(&voucher), case.digest, "case {i}: digest");

        let signature: Signature = case.signature.parse()?;
        assert_eq!(signature.recover(&case.digest)?, case.message.session_key, "case {i}: signer");

        // Our signer produces the same (deterministic, RFC 6979) signature as eth-account.
        let key = SigningKey::from_bytes(&case.signer_private_key)?;
        assert_eq!(key.address(), case.message.session_key, "case {i}: key address");
        assert_eq!(key.sign_digest(&case.digest), signature, "case {i}: signature bytes");
    }
    Ok(())
}

#[test]
fn vectors_cover_the_edges() -> Result<(), Box<dyn std::error::Error>> {
    let file = vectors()?;
    let amounts: Vec<U256> =
        file.cases.iter().map(|c| U256::from_str_radix(&c.message.cumulative_amount, 10)).collect::<Result<_, _>>()?;
    assert!(amounts.contains(&U256::ZERO));
    assert!(amounts.contains(&U256::MAX));
    let chains: std::collections::BTreeSet<u64> = file.cases.iter().map(|c| c.domain.chain_id).collect();
    assert!(chains.len() > 1, "several chains: {chains:?}");
    Ok(())
}

#[test]
fn a_tampered_vector_recovers_someone_else() -> Result<(), Box<dyn std::error::Error>> {
    let file = vectors()?;
    let case = &file.cases[0];
    let d = &case.domain;
    let signature: Signature = case.signature.parse()?;
    // Same voucher, another chain: the signature no longer speaks for the session key.
    let other_chain = ContractDomain::new(d.name.clone(), d.version.clone(), d.chain_id + 1, d.verifying_contract);
    let amount = U256::from_str_radix(&case.message.cumulative_amount, 10)?;
    let voucher = Voucher::new(case.message.session_key, case.message.payee, amount);
    let recovered = signature.recover(&other_chain.digest(&voucher));
    assert_ne!(recovered.ok(), Some(case.message.session_key));
    Ok(())
}
