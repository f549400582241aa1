//! Rust bindings generated from the committed artifacts in `contracts/artifacts/` (ABI and
//! bytecode exported from forge; CI fails when they are stale).

#![allow(missing_docs, unreachable_pub, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    SessionKeyValidator,
    "../../contracts/artifacts/SessionKeyValidator.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    TestUSDC,
    "../../contracts/artifacts/TestUSDC.json"
);
