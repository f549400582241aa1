"""The voucher a session key signs: EIP-712 `Voucher(address sessionKey,address payee,uint256
cumulativeAmount)`, hashed exactly as the contract, the Rust core and the TypeScript client hash
it (checked against testdata/vectors/voucher-eip712.json), signed with libsecp256k1 (coincurve):
deterministic (RFC 6979), low `s`, 65 bytes `r || s || v` with `v` 27 or 28."""

from __future__ import annotations

import re
from dataclasses import dataclass

import coincurve
from Crypto.Hash import keccak as _keccak

__all__ = ["Domain", "SessionKey", "keccak256", "to_checksum_address", "voucher_digest"]

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_UINT256_MAX = (1 << 256) - 1

DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
VOUCHER_TYPE = b"Voucher(address sessionKey,address payee,uint256 cumulativeAmount)"


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's, not NIST SHA3-256)."""
    return _keccak.new(digest_bits=256, data=data).digest()


def _address_bytes(address: str, what: str) -> bytes:
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(f"{what} {address!r} is not a 0x-prefixed 20-byte address")
    return bytes.fromhex(address[2:])


def _uint256(value: int, what: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT256_MAX:
        raise ValueError(f"{what} {value!r} is not a uint256")
    return value.to_bytes(32, "big")


def to_checksum_address(address: str) -> str:
    """EIP-55 mixed-case spelling of an address."""
    plain = _address_bytes(address, "address").hex()
    hashed = keccak256(plain.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(plain, hashed))


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain a 402 names: `extra.eip712.{name, version}`, the chain of its
    `network` and its `extra.validator`."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def separator(self) -> bytes:
        return keccak256(
            keccak256(DOMAIN_TYPE)
            + keccak256(self.name.encode("utf-8"))
            + keccak256(self.version.encode("utf-8"))
            + _uint256(self.chain_id, "chainId")
            + _address_bytes(self.verifying_contract, "verifyingContract").rjust(32, b"\0")
        )


def voucher_struct_hash(session_key: str, payee: str, cumulative_amount: int) -> bytes:
    return keccak256(
        keccak256(VOUCHER_TYPE)
        + _address_bytes(session_key, "sessionKey").rjust(32, b"\0")
        + _address_bytes(payee, "payee").rjust(32, b"\0")
        + _uint256(cumulative_amount, "cumulativeAmount")
    )


def voucher_digest(domain: Domain, session_key: str, payee: str, cumulative_amount: int) -> bytes:
    """`keccak256(0x1901 || domainSeparator || structHash)`: what the session key signs."""
    return keccak256(b"\x19\x01" + domain.separator() + voucher_struct_hash(session_key, payee, cumulative_amount))


class SessionKey:
    """A session key's private key. Its `repr` never shows the key."""

    __slots__ = ("_key", "address")

    def __init__(self, private_key: str | bytes) -> None:
        if isinstance(private_key, str):
            text = private_key[2:] if private_key.startswith(("0x", "0X")) else private_key
            if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
                raise ValueError("the session key must be 32 bytes of hex (0x…)")
            raw = bytes.fromhex(text)
        else:
            raw = bytes(private_key)
            if len(raw) != 32:
                raise ValueError("the session key must be 32 bytes")
        try:
            self._key = coincurve.PrivateKey(raw)
        except ValueError as err:
            raise ValueError("the session key is not a valid secp256k1 private key") from err
        public = self._key.public_key.format(compressed=False)[1:]
        self.address: str = to_checksum_address("0x" + keccak256(public)[-20:].hex())

    def sign_digest(self, digest: bytes) -> str:
        """A 65-byte `r || s || v` signature (`v` 27 or 28) of a 32-byte digest, as hex."""
        signature = self._key.sign_recoverable(digest, hasher=None)
        return "0x" + signature[:64].hex() + format(signature[64] + 27, "02x")

    def sign_voucher(self, domain: Domain, payee: str, cumulative_amount: int) -> str:
        return self.sign_digest(voucher_digest(domain, self.address, payee, cumulative_amount))

    def __repr__(self) -> str:
        return f"SessionKey({self.address})"
