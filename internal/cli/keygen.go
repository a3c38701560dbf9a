package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/internal/trust"
)

func init() {
	register(&cli.Command{
		Name:  "keygen",
		Usage: "make an Ed25519 signing key pair in minisign's format",
		Description: "Writes KEY (the secret key, mode 0600, unencrypted for automation) and KEY.pub.\n" +
			"minisign reads both: minisign -S -W -s KEY -m FILE signs, minisign -V -p KEY.pub -m FILE verifies.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Aliases: []string{"s"}, Usage: "secret key `FILE` to write (default $KILN_KEY or ~/.config/kiln/kiln.key)"},
			&cli.StringFlag{Name: "pub", Aliases: []string{"p"}, Usage: "public key `FILE` to write (default KEY with .pub)"},
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "overwrite an existing key pair"},
			jsonFlag,
		},
		Action: runKeygen,
	})
}

// kilnConfigDir is $XDG_CONFIG_HOME/kiln or ~/.config/kiln.
func kilnConfigDir() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "kiln")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".config", "kiln")
}

// defaultKeyPath is the signing key sign and build use.
func defaultKeyPath() string {
	if k := os.Getenv("KILN_KEY"); k != "" {
		return k
	}
	return filepath.Join(kilnConfigDir(), "kiln.key")
}

// pubPathFor is where a secret key's public half lives.
func pubPathFor(key string) string {
	return strings.TrimSuffix(key, ".key") + ".pub"
}

func runKeygen(c *cli.Context) error {
	if err := argN(c, 0, "no arguments"); err != nil {
		return err
	}
	e := envOf(c)
	keyPath := c.String("key")
	if keyPath == "" {
		keyPath = defaultKeyPath()
	}
	pubPath := c.String("pub")
	if pubPath == "" {
		pubPath = pubPathFor(keyPath)
	}
	if !c.Bool("force") {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Stat(p); err == nil {
				return withHint(fmt.Errorf("keygen: %s exists", p), "pass --force to replace the key pair (signatures made with the old key will no longer verify with the new one)")
			}
		}
	}
	sk, err := trust.GenerateKey(nil)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := writeKeyFile(keyPath, sk.Encode(), 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(pubPath), 0o755); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := writeKeyFile(pubPath, sk.Public().Encode(), 0o644); err != nil {
		return err
	}
	pk := sk.Public()
	if c.Bool("json") {
		return e.printJSON(map[string]string{"key": keyPath, "pub": pubPath, "key_id": pk.ID.String(), "public_key": pk.String()})
	}
	fmt.Fprintf(e.stdout, "secret key  %s (unencrypted, mode 0600: keep it secret)\n", keyPath)
	fmt.Fprintf(e.stdout, "public key  %s\n", pubPath)
	fmt.Fprintf(e.stdout, "key id      %s\n", pk.ID)
	fmt.Fprintf(e.stdout, "verify with kiln verify-sig -P %s FILE  or  minisign -V -P %s -m FILE\n", pk, pk)
	return nil
}

// loadSecretKey reads a minisign secret key file; an encrypted one needs
// passwordFile.
func loadSecretKey(path, passwordFile string) (*trust.SecretKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, withHint(fmt.Errorf("no signing key: %w", err), "make one with kiln keygen, or give one with --key (a minisign secret key works)")
		}
		return nil, err
	}
	var pw []byte
	if passwordFile != "" {
		b, err := os.ReadFile(passwordFile)
		if err != nil {
			return nil, err
		}
		pw = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	sk, err := trust.ParseSecretKey(data, pw)
	if errors.Is(err, trust.ErrEncryptedKey) {
		return nil, withHint(fmt.Errorf("%s: %w", path, err), "give the password with --password-file FILE, or remove it with minisign -C -s "+path+" and an empty password (kiln keygen makes unencrypted keys)")
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sk, nil
}

// writeKeyFile writes data to path through a temporary file and a rename.
func writeKeyFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
