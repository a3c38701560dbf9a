package recipes_test

import (
	"fmt"
	"os"
	"path/filepath"

	"kiln.dev/kiln/recipes"
)

// A recipe's derivation hash depends on what it builds, not on where the
// recipe lives.
func ExampleRecipe_Derive() {
	recipe := `name = "hello"
version = "1.0.0"
board = "arduino-uno"
toolchain = "avr-gcc-5.4"
sources = ["*.c"]
[build]
cflags = ["-Os"]
`
	var hashes []string
	for _, dir := range []string{"checkout-a", "checkout-b/nested"} {
		dir = filepath.Join(os.TempDir(), "kiln-example", dir)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(recipe), 0o644)
		os.WriteFile(filepath.Join(dir, "main.c"), []byte("int main(void) { return 0; }\n"), 0o644)
		r, err := recipes.Load(dir)
		if err != nil {
			fmt.Println(err)
			return
		}
		d, err := r.Derive()
		if err != nil {
			fmt.Println(err)
			return
		}
		hashes = append(hashes, d.Hash())
		if len(hashes) == 1 {
			fmt.Println(d.Name, d.Board.MCU, d.Toolchain.Name)
			for _, f := range d.SourceFiles() {
				fmt.Println(f.Path, f.SHA256[:12])
			}
		}
	}
	os.RemoveAll(filepath.Join(os.TempDir(), "kiln-example"))
	fmt.Println("same hash in both checkouts:", hashes[0] == hashes[1])
	// Output:
	// hello atmega328p avr-gcc-5.4
	// main.c 2ad75d956605
	// same hash in both checkouts: true
}
