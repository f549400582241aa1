"""The voucher's EIP-712 hashing and signing against testdata/vectors/voucher-eip712.json
(made with eth-account, independently of opentab): every digest, signature and signer."""

from __future__ import annotations

import json

import pytest

from opentab import Domain, SessionKey, voucher_digest
from opentab._eip712 import to_checksum_address, voucher_struct_hash

from .conftest import REPO

VECTORS = json.loads((REPO / "testdata" / "vectors" / "voucher-eip712.json").read_text())["cases"]


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: f"{c['domain']['name']}-{c['message']['cumulativeAmount'][:12]}")
def test_voucher_vectors_reproduce_digest_signature_and_signer(case: dict) -> None:
    d, m = case["domain"], case["message"]
    domain = Domain(d["name"], d["version"], int(d["chainId"]), d["verifyingContract"])
    amount = int(m["cumulativeAmount"])
    assert "0x" + domain.separator().hex() == case["domainSeparator"]
    assert "0x" + voucher_struct_hash(m["sessionKey"], m["payee"], amount).hex() == case["structHash"]
    assert "0x" + voucher_digest(domain, m["sessionKey"], m["payee"], amount).hex() == case["digest"]
    key = SessionKey(case["signerPrivateKey"])
    assert key.address == to_checksum_address(m["sessionKey"])
    assert key.sign_voucher(domain, m["payee"], amount) == case["signature"]


def test_vectors_cover_the_edges() -> None:
    assert len(VECTORS) == 20
    assert any(int(c["message"]["cumulativeAmount"]) == 2**256 - 1 for c in VECTORS)


def test_amounts_and_addresses_are_checked() -> None:
    domain = Domain("opentab", "1", 1, "0x" + "11" * 20)
    key = SessionKey("0x" + "01" * 32)
    with pytest.raises(ValueError):
        key.sign_voucher(domain, "0x" + "22" * 20, 2**256)
    with pytest.raises(ValueError):
        key.sign_voucher(domain, "0x1234", 1)
    with pytest.raises(ValueError):
        SessionKey("0x00")
    assert "01" * 8 not in repr(key)
