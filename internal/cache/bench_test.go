package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/cache/cachetest"
	"kiln.dev/kiln/internal/store"
)

// kilnRun runs the kiln binary with env and fails b on an error.
func kilnRun(b *testing.B, env []string, args ...string) string {
	b.Helper()
	cmd := exec.Command(kiln(b), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		b.Fatalf("kiln %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

func timed(fn func()) time.Duration {
	t := time.Now()
	fn()
	return time.Since(t)
}

// BenchmarkSubstituteVsBuild: blink-uno into a fresh store, once fetched
// from Debian and built, once substituted from SeaweedFS (toolchain not
// needed: the output is in the cache). Target: substitution <= 0.3x.
func BenchmarkSubstituteVsBuild(b *testing.B) {
	w := cachetest.StartWeed(b, "", "127.0.0.1")
	key := filepath.Join(b.TempDir(), "kiln.key")
	kilnRun(b, nil, "keygen", "--key", key)
	env := []string{"KILN_KEY=" + key, "AWS_ACCESS_KEY_ID=" + cachetest.AccessKey, "AWS_SECRET_ACCESS_KEY=" + cachetest.SecretKey, "KILN_POLICY="}
	recipe := recipeDir("blink-uno")
	for range b.N {
		built := filepath.Join(b.TempDir(), "built")
		tBuild := timed(func() { kilnRun(b, env, "build", "--store", built, "--out", filepath.Join(built, "out"), recipe) })
		kilnRun(b, env, "store", "push", "--store", built, "--to", w.URL("bench"), recipe)
		fresh := filepath.Join(b.TempDir(), "fresh")
		tSub := timed(func() {
			kilnRun(b, env, "build", "--store", fresh, "--out", filepath.Join(fresh, "out"), "--substituter", w.URL("bench"), recipe)
		})
		b.ReportMetric(tBuild.Seconds(), "fetch+build-s")
		b.ReportMetric(tSub.Seconds(), "substitute-s")
		b.ReportMetric(tSub.Seconds()/tBuild.Seconds(), "ratio(target<=0.3)")
		fmt.Printf("blink-uno fresh store: fetch from Debian + build %.2fs, substitute %.2fs: %.3fx\n", tBuild.Seconds(), tSub.Seconds(), tSub.Seconds()/tBuild.Seconds())
	}
}

// BenchmarkSubstituteThroughput: the avr-gcc toolchain closure substituted
// through nginx over HTTPS vs curl downloading the same objects from the
// same server. Target: kiln's throughput >= 0.8x curl's.
func BenchmarkSubstituteThroughput(b *testing.B) {
	seed := closure(b, "blink-uno")
	w := cachetest.StartWeed(b, "", "127.0.0.1")
	m := cachetest.StartMirror(b, w, "", "127.0.0.1", "tp")
	key := filepath.Join(b.TempDir(), "kiln.key")
	kilnRun(b, nil, "keygen", "--key", key)
	env := []string{"KILN_KEY=" + key, "AWS_ACCESS_KEY_ID=" + cachetest.AccessKey, "AWS_SECRET_ACCESS_KEY=" + cachetest.SecretKey,
		"SSL_CERT_FILE=" + m.CAFile, "KILN_POLICY=", "KILN_SUBSTITUTERS="}
	out := kilnRun(b, env, append([]string{"store", "push", "--to", w.URL("tp"), "--json"}, seed...)...)
	var pushed struct {
		Entries []Pushed `json:"entries"`
	}
	json.Unmarshal([]byte(out), &pushed)
	var urls []string
	var total int64
	for _, e := range pushed.Entries {
		urls = append(urls, m.URL+"/"+e.Content.Object())
		total += e.Content.Size
	}
	// kiln fetch of blink-uno: toolchain and input, substituted.
	recipe := recipeDir("blink-uno")
	for range b.N {
		dl := b.TempDir()
		args := []string{"--cacert", m.CAFile, "-sSf", "--parallel"}
		for i, u := range urls {
			args = append(args, "-o", filepath.Join(dl, fmt.Sprint(i)), u)
		}
		tCurl := timed(func() {
			if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
				b.Fatalf("curl: %v: %s", err, out)
			}
		})
		fresh := filepath.Join(b.TempDir(), "fresh")
		tKiln := timed(func() {
			kilnRun(b, env, "fetch", "--store", fresh, "--substituter", m.URL, recipe)
		})
		mb := float64(total) / 1e6
		b.ReportMetric(mb/tCurl.Seconds(), "curl-MB/s")
		b.ReportMetric(mb/tKiln.Seconds(), "kiln-MB/s")
		b.ReportMetric(tCurl.Seconds()/tKiln.Seconds(), "ratio(target>=0.8)")
		fmt.Printf("substitute %.1f MB (blink-uno closure) over HTTPS: curl %.2fs (%.1f MB/s), kiln fetch %.2fs (%.1f MB/s, unpacked and verified): %.2fx curl\n",
			mb, tCurl.Seconds(), mb/tCurl.Seconds(), tKiln.Seconds(), mb/tKiln.Seconds(), tCurl.Seconds()/tKiln.Seconds())
	}
}

// BenchmarkPushVsAWS: pushing the rpi-appliance closure (its input entries)
// vs Debian's awscli (aws s3 cp --recursive) uploading the same store
// entries to the same server. Target: kiln <= 1.0x the time.
func BenchmarkPushVsAWS(b *testing.B) {
	seed := closure(b, "rpi-appliance")
	aws := "/usr/bin/aws"
	if _, err := os.Stat(aws); err != nil {
		b.Skip("Debian's awscli is not installed")
	}
	w := cachetest.StartWeed(b, "", "127.0.0.1")
	key := filepath.Join(b.TempDir(), "kiln.key")
	kilnRun(b, nil, "keygen", "--key", key)
	env := []string{"KILN_KEY=" + key, "AWS_ACCESS_KEY_ID=" + cachetest.AccessKey, "AWS_SECRET_ACCESS_KEY=" + cachetest.SecretKey, "KILN_POLICY="}
	var raw int64
	for _, e := range seed {
		filepath.Walk(e, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				raw += fi.Size()
			}
			return nil
		})
	}
	for i := range b.N {
		var pushed struct {
			Entries []Pushed `json:"entries"`
		}
		tKiln := timed(func() {
			out := kilnRun(b, env, append([]string{"store", "push", "--to", w.URL(fmt.Sprintf("push%d", i)), "--json"}, seed...)...)
			json.Unmarshal([]byte(out), &pushed)
		})
		var sent int64
		for _, e := range pushed.Entries {
			sent += e.BytesWritten
		}
		tAWS := timed(func() {
			for _, e := range seed {
				cmd := exec.Command(aws, "--endpoint-url", w.Endpoint(), "--region", "us-east-1", "s3", "cp", "--recursive", "--quiet", "--no-follow-symlinks",
					e, fmt.Sprintf("s3://%s/aws%d/%s/", cachetest.Bucket, i, filepath.Base(e)))
				cmd.Env = append(os.Environ(), env...)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("aws s3 cp: %v: %s", err, out)
				}
			}
		})
		b.ReportMetric(tKiln.Seconds(), "kiln-s")
		b.ReportMetric(tAWS.Seconds(), "aws-s")
		b.ReportMetric(tKiln.Seconds()/tAWS.Seconds(), "ratio(target<=1.0)")
		fmt.Printf("push rpi-appliance closure (%.1f MB in %d entries): kiln %.2fs, %.1f MB sent (zstd); aws s3 cp --recursive %.2fs, %.1f MB sent: %.2fx\n",
			float64(raw)/1e6, len(seed), tKiln.Seconds(), float64(sent)/1e6, tAWS.Seconds(), float64(raw)/1e6, tKiln.Seconds()/tAWS.Seconds())
	}
	_ = store.ManifestName
	_ = context.Background
}
