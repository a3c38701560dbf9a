package cache

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Bucket is a cache in an S3 bucket (AWS, MinIO, SeaweedFS, Ceph RGW...),
// reached through minio-go.
type s3Bucket struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string // "" or ends in "/"
	url    string
	creds  string // where the credentials came from, for auth errors
}

// openS3 reads s3://BUCKET/PREFIX?endpoint=URL&region=R&profile=P.
// Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
// AWS_SESSION_TOKEN), else the profile (?profile=, else $AWS_PROFILE, else
// "default") of the shared credentials file ($AWS_SHARED_CREDENTIALS_FILE,
// else ~/.aws/credentials), else none (a public bucket, read-only).
func openS3(u *url.URL) (Bucket, error) {
	raw := u.Redacted()
	if u.Host == "" {
		return nil, fmt.Errorf("cache: %w: %s: no bucket (s3://BUCKET/PREFIX)", ErrBadURL, raw)
	}
	q := u.Query()
	for k := range q {
		switch k {
		case "endpoint", "region", "profile", "addressing-style":
		default:
			return nil, fmt.Errorf("cache: %w: %s: unknown parameter %q (want endpoint, region, profile, addressing-style)", ErrBadURL, raw, k)
		}
	}
	region := q.Get("region")
	if region == "" {
		region = os.Getenv("AWS_REGION")
	}
	if region == "" {
		region = "us-east-1"
	}
	endpoint, secure := "s3.amazonaws.com", true
	lookup := minio.BucketLookupAuto
	if ep := q.Get("endpoint"); ep != "" {
		eu, err := url.Parse(ep)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, fmt.Errorf("cache: %w: %s: endpoint %q: want http://HOST[:PORT] or https://HOST[:PORT]", ErrBadURL, raw, ep)
		}
		endpoint, secure = eu.Host, eu.Scheme == "https"
		lookup = minio.BucketLookupPath // custom endpoints: path-style, as Nix does
	}
	switch q.Get("addressing-style") {
	case "", "auto":
	case "path":
		lookup = minio.BucketLookupPath
	case "virtual":
		lookup = minio.BucketLookupDNS
	default:
		return nil, fmt.Errorf("cache: %w: %s: addressing-style %q: want auto, path or virtual", ErrBadURL, raw, q.Get("addressing-style"))
	}
	creds, from := s3Credentials(q.Get("profile"))
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	tr.MaxIdleConnsPerHost = 32
	c, err := minio.New(endpoint, &minio.Options{
		Creds: creds, Secure: secure, Region: region, BucketLookup: lookup, Transport: tr,
		MaxRetries: 1, // kiln's own retry policy (retry.go) decides
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %s: %w", raw, err)
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &s3Bucket{client: c, core: minio.Core{Client: c}, bucket: u.Host, prefix: prefix, url: raw, creds: from}, nil
}

// s3Credentials picks the credentials as the AWS tools do and says where
// they came from.
func s3Credentials(profile string) (*credentials.Credentials, string) {
	if os.Getenv("AWS_ACCESS_KEY_ID") != "" {
		return credentials.NewEnvAWS(), "AWS_ACCESS_KEY_ID from the environment"
	}
	if profile == "" {
		profile = os.Getenv("AWS_PROFILE")
	}
	if profile == "" {
		profile = "default"
	}
	file := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		if home, err := os.UserHomeDir(); err == nil {
			file = filepath.Join(home, ".aws", "credentials")
		}
	}
	if file != "" {
		fc := credentials.NewFileAWSCredentials(file, profile)
		if v, err := fc.GetWithContext(nil); err == nil && v.AccessKeyID != "" {
			return fc, fmt.Sprintf("profile %q in %s", profile, file)
		}
	}
	return credentials.NewStaticV4("", "", ""), "no credentials (AWS_ACCESS_KEY_ID unset, no profile " + fmt.Sprintf("%q", profile) + " in " + file + "): anonymous"
}

func (b *s3Bucket) String() string { return b.url }

func (b *s3Bucket) key(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	return b.prefix + name, nil
}

// classify maps an S3 error to kiln's sentinels.
func (b *s3Bucket) classify(op, name string, err error) error {
	what := fmt.Sprintf("cache: %s %s/%s", op, b.url, name)
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey", "NotFound":
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AllAccessDisabled":
		return fmt.Errorf("%s: %w: %s (%s; credentials: %s)", what, ErrAuth, resp.Code, resp.Message, b.creds)
	case "NoSuchBucket":
		return fmt.Errorf("%s: no bucket %q", what, b.bucket)
	case "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout":
		return fmt.Errorf("%s: %w: %s", what, ErrUnavailable, resp.Code)
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	case http.StatusForbidden, http.StatusUnauthorized:
		return fmt.Errorf("%s: %w: %s (credentials: %s)", what, ErrAuth, http.StatusText(resp.StatusCode), b.creds)
	}
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%s: %w: %s", what, ErrUnavailable, http.StatusText(resp.StatusCode))
	}
	if resp.StatusCode == 0 {
		return netErr(what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (b *s3Bucket) Get(ctx context.Context, name string, offset int64) (io.ReadCloser, error) {
	k, err := b.key(name)
	if err != nil {
		return nil, err
	}
	var opts minio.GetObjectOptions
	if offset > 0 {
		if err := opts.SetRange(offset, 0); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	rc, _, _, err := b.core.GetObject(ctx, b.bucket, k, opts)
	if err != nil {
		return nil, b.classify("get", name, err)
	}
	return rc, nil
}

func (b *s3Bucket) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	k, err := b.key(name)
	if err != nil {
		return err
	}
	opts := minio.PutObjectOptions{ContentType: contentType(name), PartSize: 64 << 20}
	if _, err := b.client.PutObject(ctx, b.bucket, k, r, size, opts); err != nil {
		return b.classify("put", name, err)
	}
	return nil
}

func contentType(name string) string {
	if strings.HasSuffix(name, ".json") {
		return "application/json"
	}
	return "application/octet-stream"
}

func (b *s3Bucket) Stat(ctx context.Context, name string) (int64, error) {
	k, err := b.key(name)
	if err != nil {
		return 0, err
	}
	info, err := b.client.StatObject(ctx, b.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return 0, b.classify("stat", name, err)
	}
	return info.Size, nil
}

func (b *s3Bucket) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	for obj := range b.client.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.prefix + prefix, Recursive: true}) {
		if obj.Err != nil {
			return b.classify("list", prefix, obj.Err)
		}
		if err := fn(strings.TrimPrefix(obj.Key, b.prefix), obj.Size); err != nil {
			return err
		}
	}
	return ctx.Err()
}
