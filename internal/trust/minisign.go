package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/scrypt"
)

// Errors returned by the minisign functions. Test them with errors.Is.
var (
	// ErrMalformed marks key or signature data that is not minisign's format.
	ErrMalformed = errors.New("malformed minisign data")
	// ErrBadSignature means a signature (or its trusted comment) does not
	// match the data and the key.
	ErrBadSignature = errors.New("signature verification failed")
	// ErrWrongKey means the signature was made by a key other than the one
	// (or ones) it was checked against.
	ErrWrongKey = errors.New("signature made by a different key")
	// ErrEncryptedKey means a secret key is password-protected and no
	// password was given.
	ErrEncryptedKey = errors.New("secret key is encrypted")
	// ErrPassword means decrypting a secret key failed its checksum: a wrong
	// password or a corrupt file.
	ErrPassword = errors.New("wrong password or corrupt secret key")
)

const (
	algLegacy  = "Ed" // signs the message itself
	algHashed  = "ED" // signs BLAKE2b-512(message)
	kdfNone    = "\x00\x00"
	kdfScrypt  = "Sc"
	chkBlake2b = "B2"

	keyIDLen     = 8
	pubKeyLen    = 2 + keyIDLen + ed25519.PublicKeySize      // 42
	sigLen       = 2 + keyIDLen + ed25519.SignatureSize      // 74
	saltLen      = 32                                        // scryptsalsa208sha256 salt
	keynumSKLen  = keyIDLen + ed25519.PrivateKeySize + 32    // key id, key, checksum
	secretKeyLen = 2 + 2 + 2 + saltLen + 8 + 8 + keynumSKLen // 158
	commentPfx   = "untrusted comment: "
	trustedPfx   = "trusted comment: "
)

// minisign's parameters for encrypted secret keys (libsodium's
// OPSLIMIT/MEMLIMIT_SCRYPTSALSA208SHA256_SENSITIVE).
const (
	DefaultOpsLimit = 33554432
	DefaultMemLimit = 1073741824
)

// KeyID names a key pair; minisign prints it as the upper-case hex of the
// little-endian number, without leading zeros.
type KeyID [keyIDLen]byte

func (id KeyID) String() string {
	return fmt.Sprintf("%X", binary.LittleEndian.Uint64(id[:]))
}

// PublicKey is a minisign public key.
type PublicKey struct {
	ID  KeyID
	Key ed25519.PublicKey
}

// SecretKey is a minisign secret key (with its public half).
type SecretKey struct {
	ID  KeyID
	Key ed25519.PrivateKey
}

// GenerateKey makes a new key pair. rand may be nil (crypto/rand).
func GenerateKey(random io.Reader) (*SecretKey, error) {
	if random == nil {
		random = rand.Reader
	}
	_, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return nil, fmt.Errorf("trust: generate key: %w", err)
	}
	sk := &SecretKey{Key: priv}
	if _, err := io.ReadFull(random, sk.ID[:]); err != nil {
		return nil, fmt.Errorf("trust: generate key id: %w", err)
	}
	return sk, nil
}

// Public returns the public half of sk.
func (sk *SecretKey) Public() *PublicKey {
	return &PublicKey{ID: sk.ID, Key: sk.Key.Public().(ed25519.PublicKey)}
}

// String returns the key as minisign's one-line base64 form (what
// `minisign -P` takes).
func (pk *PublicKey) String() string {
	b := make([]byte, 0, pubKeyLen)
	b = append(b, algLegacy...)
	b = append(b, pk.ID[:]...)
	b = append(b, pk.Key...)
	return base64.StdEncoding.EncodeToString(b)
}

// Encode returns the content of a minisign public key file.
func (pk *PublicKey) Encode() []byte {
	return []byte(fmt.Sprintf("%sminisign public key %s\n%s\n", commentPfx, pk.ID, pk))
}

// Equal reports whether two public keys are the same key pair.
func (pk *PublicKey) Equal(o *PublicKey) bool {
	return o != nil && pk.ID == o.ID && pk.Key.Equal(o.Key)
}

// keyLine is a key file's first line that is neither blank nor a comment
// ("" if there is none), trimmed.
func keyLine(data []byte) string {
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, commentPfx) {
			continue
		}
		return l
	}
	return ""
}

// ParsePublicKey reads a public key file's content or the bare base64 line.
func ParsePublicKey(data []byte) (*PublicKey, error) {
	raw, err := base64.StdEncoding.DecodeString(keyLine(data))
	if err != nil || len(raw) != pubKeyLen {
		return nil, fmt.Errorf("trust: public key: %w: want %d bytes of base64", ErrMalformed, pubKeyLen)
	}
	if string(raw[:2]) != algLegacy {
		return nil, fmt.Errorf("trust: public key: %w: algorithm %q is not Ed25519", ErrMalformed, raw[:2])
	}
	pk := &PublicKey{Key: ed25519.PublicKey(append([]byte(nil), raw[2+keyIDLen:]...))}
	copy(pk.ID[:], raw[2:2+keyIDLen])
	return pk, nil
}

// checksum is minisign's secret key checksum: BLAKE2b-256 over the
// signature algorithm, the key id and the secret key.
func (sk *SecretKey) checksum() []byte {
	h, _ := blake2b.New256(nil)
	h.Write([]byte(algLegacy))
	h.Write(sk.ID[:])
	h.Write(sk.Key)
	return h.Sum(nil)
}

// Encode returns the content of an unencrypted minisign secret key file
// (as `minisign -G -W` writes). Keep it with mode 0600.
func (sk *SecretKey) Encode() []byte {
	b := make([]byte, 0, secretKeyLen)
	b = append(b, algLegacy...)
	b = append(b, kdfNone...)
	b = append(b, chkBlake2b...)
	b = append(b, make([]byte, saltLen+16)...) // no salt, no limits
	b = append(b, sk.ID[:]...)
	b = append(b, sk.Key...)
	b = append(b, sk.checksum()...)
	return []byte(fmt.Sprintf("%sminisign secret key %s\n%s\n", commentPfx, sk.ID, base64.StdEncoding.EncodeToString(b)))
}

// EncodeEncrypted returns the content of a password-protected secret key
// file: scrypt (salsa20/8, SHA-256) with minisign's parameters derives a
// stream XORed over the key id, key and checksum. opsLimit and memLimit are
// libsodium's; DefaultOpsLimit and DefaultMemLimit are minisign's.
func (sk *SecretKey) EncodeEncrypted(random io.Reader, password []byte, opsLimit, memLimit uint64) ([]byte, error) {
	if random == nil {
		random = rand.Reader
	}
	b := make([]byte, 0, secretKeyLen)
	b = append(b, algLegacy...)
	b = append(b, kdfScrypt...)
	b = append(b, chkBlake2b...)
	salt := make([]byte, saltLen)
	if _, err := io.ReadFull(random, salt); err != nil {
		return nil, fmt.Errorf("trust: encrypt secret key: %w", err)
	}
	b = append(b, salt...)
	b = binary.LittleEndian.AppendUint64(b, opsLimit)
	b = binary.LittleEndian.AppendUint64(b, memLimit)
	plain := make([]byte, 0, keynumSKLen)
	plain = append(plain, sk.ID[:]...)
	plain = append(plain, sk.Key...)
	plain = append(plain, sk.checksum()...)
	stream, err := scryptStream(password, salt, opsLimit, memLimit)
	if err != nil {
		return nil, err
	}
	subtle.XORBytes(plain, plain, stream)
	b = append(b, plain...)
	return []byte(fmt.Sprintf("%sminisign encrypted secret key\n%s\n", commentPfx, base64.StdEncoding.EncodeToString(b))), nil
}

// ParseSecretKey reads a minisign secret key file. password is used only
// when the key is encrypted; without one an encrypted key returns
// ErrEncryptedKey.
func ParseSecretKey(data, password []byte) (*SecretKey, error) {
	raw, err := base64.StdEncoding.DecodeString(keyLine(data))
	if err != nil || len(raw) != secretKeyLen {
		return nil, fmt.Errorf("trust: secret key: %w: want %d bytes of base64", ErrMalformed, secretKeyLen)
	}
	sig, kdf, chk := string(raw[0:2]), string(raw[2:4]), string(raw[4:6])
	if sig != algLegacy || chk != chkBlake2b {
		return nil, fmt.Errorf("trust: secret key: %w: algorithms %q/%q", ErrMalformed, sig, chk)
	}
	salt := raw[6 : 6+saltLen]
	ops := binary.LittleEndian.Uint64(raw[6+saltLen:])
	mem := binary.LittleEndian.Uint64(raw[6+saltLen+8:])
	keynum := append([]byte(nil), raw[6+saltLen+16:]...)
	switch kdf {
	case kdfNone:
	case kdfScrypt:
		if password == nil {
			return nil, fmt.Errorf("trust: secret key: %w (give its password, or make an unencrypted one with kiln keygen or minisign -G -W)", ErrEncryptedKey)
		}
		stream, err := scryptStream(password, salt, ops, mem)
		if err != nil {
			return nil, err
		}
		subtle.XORBytes(keynum, keynum, stream)
	default:
		return nil, fmt.Errorf("trust: secret key: %w: unknown key derivation %q", ErrMalformed, kdf)
	}
	sk := &SecretKey{Key: ed25519.PrivateKey(append([]byte(nil), keynum[keyIDLen:keyIDLen+ed25519.PrivateKeySize]...))}
	copy(sk.ID[:], keynum[:keyIDLen])
	got := keynum[keyIDLen+ed25519.PrivateKeySize:]
	// minisign -W leaves the checksum of an unencrypted key zero.
	zero := kdf == kdfNone && bytes.Equal(got, make([]byte, len(got)))
	if !zero && subtle.ConstantTimeCompare(got, sk.checksum()) != 1 {
		if kdf == kdfScrypt {
			return nil, fmt.Errorf("trust: secret key: %w", ErrPassword)
		}
		return nil, fmt.Errorf("trust: secret key: %w: checksum mismatch", ErrMalformed)
	}
	if !bytes.Equal(ed25519.NewKeyFromSeed(sk.Key.Seed()), sk.Key) {
		return nil, fmt.Errorf("trust: secret key: %w: public half does not match the seed", ErrMalformed)
	}
	return sk, nil
}

// scryptStream derives minisign's key-encryption stream: libsodium's
// crypto_pwhash_scryptsalsa208sha256 with its opslimit/memlimit to (N, r, p)
// mapping.
func scryptStream(password, salt []byte, opsLimit, memLimit uint64) ([]byte, error) {
	nLog2, r, p := scryptParams(opsLimit, memLimit)
	if nLog2 > 24 {
		return nil, fmt.Errorf("trust: secret key: %w: scrypt N=2^%d is beyond any key minisign makes", ErrMalformed, nLog2)
	}
	k, err := scrypt.Key(password, salt, 1<<nLog2, int(r), int(p), keynumSKLen)
	if err != nil {
		return nil, fmt.Errorf("trust: secret key: scrypt: %w", err)
	}
	return k, nil
}

// scryptParams is libsodium's pickparams.
func scryptParams(ops, mem uint64) (nLog2 uint, r, p uint64) {
	if ops < 32768 {
		ops = 32768
	}
	r = 8
	if ops < mem/32 {
		p = 1
		maxN := ops / (r * 4)
		for nLog2 = 1; nLog2 < 63; nLog2++ {
			if uint64(1)<<nLog2 > maxN/2 {
				break
			}
		}
		return nLog2, r, p
	}
	maxN := mem / (r * 128)
	for nLog2 = 1; nLog2 < 63; nLog2++ {
		if uint64(1)<<nLog2 > maxN/2 {
			break
		}
	}
	maxrp := (ops / 4) / (uint64(1) << nLog2)
	if maxrp > 0x3fffffff {
		maxrp = 0x3fffffff
	}
	p = maxrp / r
	if p == 0 {
		p = 1
	}
	return nLog2, r, p
}

// Signature is a minisign signature file.
type Signature struct {
	UntrustedComment string
	Algorithm        string // "ED" (prehashed) or "Ed" (legacy)
	KeyID            KeyID
	Sig              []byte // Ed25519 over BLAKE2b-512(data) ("ED") or data ("Ed")
	TrustedComment   string
	GlobalSig        []byte // Ed25519 over Sig || TrustedComment
}

// Encode returns the content of a .minisig file.
func (s *Signature) Encode() []byte {
	b := make([]byte, 0, sigLen)
	b = append(b, s.Algorithm...)
	b = append(b, s.KeyID[:]...)
	b = append(b, s.Sig...)
	return []byte(fmt.Sprintf("%s%s\n%s\n%s%s\n%s\n", commentPfx, s.UntrustedComment,
		base64.StdEncoding.EncodeToString(b), trustedPfx, s.TrustedComment,
		base64.StdEncoding.EncodeToString(s.GlobalSig)))
}

// ParseSignature reads a .minisig file.
func ParseSignature(data []byte) (*Signature, error) {
	lines := strings.Split(strings.TrimRight(string(data), "\r\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimSuffix(lines[i], "\r")
	}
	if len(lines) != 4 {
		return nil, fmt.Errorf("trust: signature: %w: want 4 lines, got %d", ErrMalformed, len(lines))
	}
	if !strings.HasPrefix(lines[0], commentPfx) || !strings.HasPrefix(lines[2], trustedPfx) {
		return nil, fmt.Errorf("trust: signature: %w: missing comment lines", ErrMalformed)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[1])
	if err != nil || len(raw) != sigLen {
		return nil, fmt.Errorf("trust: signature: %w: want %d bytes of base64", ErrMalformed, sigLen)
	}
	global, err := base64.StdEncoding.DecodeString(lines[3])
	if err != nil || len(global) != ed25519.SignatureSize {
		return nil, fmt.Errorf("trust: signature: %w: bad global signature", ErrMalformed)
	}
	s := &Signature{
		UntrustedComment: strings.TrimPrefix(lines[0], commentPfx),
		Algorithm:        string(raw[:2]),
		Sig:              append([]byte(nil), raw[2+keyIDLen:]...),
		TrustedComment:   strings.TrimPrefix(lines[2], trustedPfx),
		GlobalSig:        global,
	}
	copy(s.KeyID[:], raw[2:2+keyIDLen])
	if s.Algorithm != algHashed && s.Algorithm != algLegacy {
		return nil, fmt.Errorf("trust: signature: %w: algorithm %q", ErrMalformed, s.Algorithm)
	}
	return s, nil
}

// Sign signs data read from r in the prehashed ("ED") form with the given
// one-line trusted comment.
func Sign(sk *SecretKey, r io.Reader, trustedComment string) (*Signature, error) {
	h, _ := blake2b.New512(nil)
	if _, err := io.Copy(h, r); err != nil {
		return nil, fmt.Errorf("trust: sign: %w", err)
	}
	return signDigest(sk, h.Sum(nil), trustedComment)
}

func signDigest(sk *SecretKey, digest []byte, trustedComment string) (*Signature, error) {
	if strings.ContainsAny(trustedComment, "\r\n") {
		return nil, fmt.Errorf("trust: sign: the trusted comment must be one line")
	}
	s := &Signature{
		UntrustedComment: "signature from kiln secret key",
		Algorithm:        algHashed,
		KeyID:            sk.ID,
		Sig:              ed25519.Sign(sk.Key, digest),
		TrustedComment:   trustedComment,
	}
	s.GlobalSig = ed25519.Sign(sk.Key, append(append([]byte(nil), s.Sig...), trustedComment...))
	return s, nil
}

// Verify checks that s is pk's signature of the data read from r, and that
// its trusted comment is the one signed. It returns ErrWrongKey when s was
// made by another key and ErrBadSignature when the data or the trusted
// comment changed.
func Verify(pk *PublicKey, r io.Reader, s *Signature) error {
	_, err := verify([]*PublicKey{pk}, r, s)
	return err
}

func verify(keys []*PublicKey, r io.Reader, s *Signature) (*PublicKey, error) {
	if s.Algorithm == algHashed {
		if _, err := findKey(keys, s); err != nil {
			return nil, err
		}
		h, _ := blake2b.New512(nil)
		if _, err := io.Copy(h, r); err != nil {
			return nil, fmt.Errorf("trust: verify: %w", err)
		}
		return verifyDigest(keys, h.Sum(nil), s)
	}
	pk, err := findKey(keys, s)
	if err != nil {
		return nil, err
	}
	if s.Algorithm != algLegacy {
		return nil, fmt.Errorf("trust: verify: %w: algorithm %q", ErrMalformed, s.Algorithm)
	}
	msg, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("trust: verify: %w", err)
	}
	return pk, checkSigs(pk, msg, s)
}

// verifyDigest checks a prehashed ("ED") signature over digest.
func verifyDigest(keys []*PublicKey, digest []byte, s *Signature) (*PublicKey, error) {
	pk, err := findKey(keys, s)
	if err != nil {
		return nil, err
	}
	if s.Algorithm != algHashed {
		return nil, fmt.Errorf("trust: verify: %w: algorithm %q is not prehashed", ErrMalformed, s.Algorithm)
	}
	return pk, checkSigs(pk, digest, s)
}

func checkSigs(pk *PublicKey, msg []byte, s *Signature) error {
	if !ed25519.Verify(pk.Key, msg, s.Sig) {
		return fmt.Errorf("trust: verify: %w: the data does not match the signature", ErrBadSignature)
	}
	if !ed25519.Verify(pk.Key, append(append([]byte(nil), s.Sig...), s.TrustedComment...), s.GlobalSig) {
		return fmt.Errorf("trust: verify: %w: the trusted comment was changed", ErrBadSignature)
	}
	return nil
}

func findKey(keys []*PublicKey, s *Signature) (*PublicKey, error) {
	var pk *PublicKey
	for _, k := range keys {
		if k.ID == s.KeyID {
			pk = k
			break
		}
	}
	if pk == nil {
		ids := make([]string, len(keys))
		for i, k := range keys {
			ids[i] = k.ID.String()
		}
		return nil, fmt.Errorf("trust: verify: %w: key %s, trusted %s", ErrWrongKey, s.KeyID, strings.Join(ids, ", "))
	}
	return pk, nil
}

// Claims are what kiln writes into a trusted comment. minisign shows the
// comment as it is; kiln reads the fields back.
type Claims struct {
	Timestamp  int64  // seconds since the epoch
	File       string // base name of the signed file
	SHA256     string // hex SHA-256 of the signed file
	Derivation string // derivation hash of the build that made it, if known
}

// String formats c as a trusted comment: minisign's own fields first
// ("timestamp:…	file:…	hashed"), then kiln's.
func (c Claims) String() string {
	clean := strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")
	s := fmt.Sprintf("timestamp:%d\tfile:%s\thashed", c.Timestamp, clean.Replace(c.File))
	if c.SHA256 != "" {
		s += "\tsha256:" + c.SHA256
	}
	if c.Derivation != "" {
		s += "\tderivation:" + clean.Replace(c.Derivation)
	}
	return s
}

// ParseClaims reads the fields of a trusted comment; unknown fields are
// ignored and missing ones stay empty.
func ParseClaims(trustedComment string) Claims {
	var c Claims
	for _, f := range strings.Split(trustedComment, "\t") {
		k, v, ok := strings.Cut(f, ":")
		if !ok {
			continue
		}
		switch k {
		case "timestamp":
			c.Timestamp, _ = strconv.ParseInt(v, 10, 64)
		case "file":
			c.File = v
		case "sha256":
			c.SHA256 = v
		case "derivation":
			c.Derivation = v
		}
	}
	return c
}

// SignArtifact signs the artifact read from r, computing its SHA-256 on the
// way and writing it, the file name and the derivation hash into the
// trusted comment.
func SignArtifact(sk *SecretKey, r io.Reader, name, derivation string, now time.Time) (*Signature, Claims, error) {
	b2, s2, err := hashBoth(r)
	if err != nil {
		return nil, Claims{}, fmt.Errorf("trust: sign %s: %w", name, err)
	}
	c := Claims{Timestamp: now.Unix(), File: name, SHA256: hex.EncodeToString(s2), Derivation: derivation}
	s, err := signDigest(sk, b2, c.String())
	return s, c, err
}

// hashBoth returns the BLAKE2b-512 and the SHA-256 of what r yields,
// hashing each chunk with both functions at once (one core each).
func hashBoth(r io.Reader) (b2sum, s256 []byte, err error) {
	b2, _ := blake2b.New512(nil)
	s2 := sha256.New()
	bufs := [2][]byte{make([]byte, 256<<10), make([]byte, 256<<10)}
	chunks := make(chan []byte)
	done := make(chan struct{})
	go func() {
		for c := range chunks {
			s2.Write(c)
			done <- struct{}{}
		}
	}()
	defer close(chunks)
	for i := 0; ; i++ {
		buf := bufs[i%2]
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			chunks <- buf[:n]
			b2.Write(buf[:n])
			<-done
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return nil, nil, rerr
		}
	}
	return b2.Sum(nil), s2.Sum(nil), nil
}

// Verified is what VerifyArtifact proved.
type Verified struct {
	Key    *PublicKey
	Claims Claims
	SHA256 string // of the data actually read
}

// VerifyArtifact checks s against any of keys and, when the trusted comment
// names a SHA-256, that it is the data's: a signer cannot claim a hash the
// data does not have.
func VerifyArtifact(keys []*PublicKey, r io.Reader, s *Signature) (*Verified, error) {
	var sum []byte
	var pk *PublicKey
	var err error
	if s.Algorithm == algHashed {
		// Both hashes at once; the signature is over the BLAKE2b one.
		b2, s2, herr := hashBoth(r)
		if herr != nil {
			return nil, fmt.Errorf("trust: verify: %w", herr)
		}
		pk, err = verifyDigest(keys, b2, s)
		sum = s2
	} else {
		h := sha256.New()
		pk, err = verify(keys, io.TeeReader(r, h), s)
		sum = h.Sum(nil)
	}
	if err != nil {
		return nil, err
	}
	v := &Verified{Key: pk, Claims: ParseClaims(s.TrustedComment), SHA256: hex.EncodeToString(sum)}
	if v.Claims.SHA256 != "" && !strings.EqualFold(v.Claims.SHA256, v.SHA256) {
		return nil, fmt.Errorf("trust: verify: %w: trusted comment names sha256 %s, the file is %s", ErrBadSignature, v.Claims.SHA256, v.SHA256)
	}
	return v, nil
}
