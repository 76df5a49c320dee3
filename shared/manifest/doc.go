// Package manifest encodes, signs and verifies the vmcred manifest: the list
// of credentials a host gave one micro-VM (name, size, SHA-256, delivery,
// restart policy), with the VM's name, the agent's session challenge, a
// generation number, and issued-at and not-after times (DESIGN.md §3
// "Manifest" and §8).
//
// The host builds a Manifest, encodes it with MarshalBinary, and wraps the
// body in an envelope with Sign (Ed25519) or WrapUnsigned. The envelope
// travels in the host-dialed session (package channel), signed over the
// challenge the agent just sent, or, for firmware carriers, base64-encoded
// as the value of the credential "vmcred.manifest" under vmcred's own OEM
// prefix; the guest agent decodes it with Open, checks it with
// Manifest.Check, and checks each credential it received with
// Entry.Matches. A manifest holds digests of the values: it is kept where
// the values are, never on a command line or in a file others can read.
//
// The package is OS-free (bytes in, values out: no os, syscall or net) and may
// be imported by host and guest packages alike. It also holds the text
// formats of the key files `vmcred-host keygen` writes.
//
// # Body encoding, version 2
//
// There is exactly one encoding per manifest: Unmarshal refuses anything
// MarshalBinary would not have produced, so a signature covers one meaning.
// Integers are big-endian; "uvarint" is encoding/binary's unsigned varint in
// its shortest form; "str8" is a one-byte length n followed by n bytes.
//
//	magic      4 bytes  "VMCM"
//	version    1 byte   2
//	flags      1 byte   bit 0: not-after present
//	                    bit 1: session challenge present
//	                    bit 2: session budget present
//	                    bits 3-7: zero
//	vm         str8     1-255 bytes of printable ASCII, no '/' or ':', not "." or ".."
//	challenge  32 bytes (if bit 1) not all zero
//	generation uvarint  0 to 2^63
//	issued-at  8 bytes  Unix seconds, 1 to MaxUnix
//	not-after  8 bytes  Unix seconds, later than issued-at, at most MaxUnix (if bit 0)
//	budget     uvarint  milliseconds, 1 to MaxBudget (if bit 2): how long the
//	                    host waits for the session's report
//	count      uvarint  0 to MaxEntries
//	entries    count times, names strictly increasing (bytewise):
//	  name     str8     a valid systemd credential name (credential.ValidateName)
//	  size     uvarint  0 to MaxEntrySize; size 0 needs the digest of empty data
//	  sha256   32 bytes
//	  attr     1 byte   bits 0-3: delivery (1 smbios, 2 fwcfg, 3 channel)
//	                    bit 4: static (a non-secret string)
//	                    bits 5-6: policy (0 restart, 1 reload, 2 none)
//	                    bit 7: zero
//
// # Envelope encoding, version 2
//
//	magic      4 bytes  "VMCE"
//	version    1 byte   2
//	alg        1 byte   0: unsigned, 1: Ed25519
//	key ID     8 bytes  (alg 1) the first 8 bytes of SHA-256 of the public key
//	signature  64 bytes (alg 1) Ed25519 over SignaturePrefix followed by the body
//	body       the rest: one complete body encoding
//
// # Versions
//
// A decoder accepts only the versions it knows and refuses any other with a
// *VersionError wrapping ErrUnsupportedVersion; it never skips what it cannot
// check. A future field (an attestation section, a new delivery) therefore
// comes with a new version number, and hosts should emit the lowest version
// that can express a manifest so that older guests keep working.
package manifest
