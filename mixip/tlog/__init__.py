"""The verifiable core of the audit log: RFC 9162 Merkle trees and proofs, and the C2SP signed
note, checkpoint, cosignature and proof-file formats. Standard library and `cryptography` only,
so the `mixip-client` wheel ships it to auditors who do not run the mesh (docs/audit-log.md)."""
