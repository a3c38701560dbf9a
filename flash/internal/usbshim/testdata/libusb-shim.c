/*
 * libusb-shim: a stand-in for libusb-1.0, loaded with LD_PRELOAD, that
 * presents one USB device whose requests are answered by a kiln device
 * model over a Unix socket ($KILN_USB_SHIM). It lets unmodified libusb
 * programs (dfu-util, OpenOCD, kiln's gousb adapter) talk to the model:
 * control transfers, and bulk transfers both synchronous and asynchronous
 * (libusb_submit_transfer completed from libusb_handle_events*).
 *
 * Wire protocol (little-endian):
 *   'C' bmRequestType bRequest wValue(2) wIndex(2) wLength(2) [OUT data]
 *       -> rc(4, signed: bytes or a negative libusb error) [IN data]
 *   'A' interface alt -> rc(4)
 *   'B' endpoint length(4) [OUT data]
 *       -> rc(4: bytes, or LIBUSB_ERROR_TIMEOUT when an IN endpoint has
 *          nothing yet) [IN data]
 */
#include <libusb-1.0/libusb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int sock = -1;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char devdesc[18];
static unsigned char cfgraw[4096];
static int cfglen;
static int thedev, thectx, thehandle;
static pthread_mutex_t pendmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pendcv = PTHREAD_COND_INITIALIZER; /* a transfer was submitted */

static int io(int w, void *b, int n) {
	unsigned char *p = b;
	while (n > 0) {
		ssize_t k = w ? write(sock, p, n) : read(sock, p, n);
		if (k <= 0)
			return -1;
		p += k;
		n -= k;
	}
	return 0;
}

static int xfer(uint8_t rt, uint8_t req, uint16_t val, uint16_t idx, unsigned char *data, uint16_t len) {
	unsigned char h[9] = {'C', rt, req, val & 0xff, val >> 8, idx & 0xff, idx >> 8, len & 0xff, len >> 8};
	int32_t rc = LIBUSB_ERROR_IO;
	pthread_mutex_lock(&mu);
	if (sock < 0 || io(1, h, 9) || (!(rt & 0x80) && len && io(1, data, len)) || io(0, &rc, 4))
		rc = LIBUSB_ERROR_NO_DEVICE;
	else if ((rt & 0x80) && rc > 0 && io(0, data, rc))
		rc = LIBUSB_ERROR_IO;
	pthread_mutex_unlock(&mu);
	return rc;
}

static int32_t bulk(unsigned char ep, unsigned char *data, int len) {
	unsigned char h[6] = {'B', ep, len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff};
	int32_t rc = LIBUSB_ERROR_IO;
	pthread_mutex_lock(&mu);
	if (sock < 0 || io(1, h, 6) || (!(ep & 0x80) && len && io(1, data, len)) || io(0, &rc, 4))
		rc = LIBUSB_ERROR_NO_DEVICE;
	else if ((ep & 0x80) && rc > 0 && (rc > len || io(0, data, rc)))
		rc = LIBUSB_ERROR_IO;
	pthread_mutex_unlock(&mu);
	return rc;
}

int LIBUSB_CALL libusb_init(libusb_context **ctx) {
	if (sock < 0) {
		const char *path = getenv("KILN_USB_SHIM");
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		if (!path || strlen(path) >= sizeof a.sun_path)
			return LIBUSB_ERROR_OTHER;
		strcpy(a.sun_path, path);
		sock = socket(AF_UNIX, SOCK_STREAM, 0);
		if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof a) < 0) {
			close(sock);
			sock = -1;
			return LIBUSB_ERROR_OTHER;
		}
		if (xfer(0x80, 6, 0x0100, 0, devdesc, 18) != 18)
			return LIBUSB_ERROR_OTHER;
		cfglen = xfer(0x80, 6, 0x0200, 0, cfgraw, sizeof cfgraw);
		if (cfglen < 9)
			return LIBUSB_ERROR_OTHER;
	}
	if (ctx)
		*ctx = (libusb_context *)&thectx;
	return 0;
}

void LIBUSB_CALL libusb_exit(libusb_context *ctx) { (void)ctx; }
int LIBUSB_CALL libusb_set_option(libusb_context *ctx, enum libusb_option o, ...) { (void)ctx; (void)o; return 0; }
void LIBUSB_CALL libusb_set_debug(libusb_context *ctx, int level) { (void)ctx; (void)level; }

ssize_t LIBUSB_CALL libusb_get_device_list(libusb_context *ctx, libusb_device ***list) {
	(void)ctx;
	libusb_device **l = calloc(2, sizeof *l);
	l[0] = (libusb_device *)&thedev;
	*list = l;
	return 1;
}
void LIBUSB_CALL libusb_free_device_list(libusb_device **list, int unref) { (void)unref; free(list); }
libusb_device *LIBUSB_CALL libusb_ref_device(libusb_device *dev) { return dev; }
void LIBUSB_CALL libusb_unref_device(libusb_device *dev) { (void)dev; }
uint8_t LIBUSB_CALL libusb_get_bus_number(libusb_device *dev) { (void)dev; return 1; }
uint8_t LIBUSB_CALL libusb_get_device_address(libusb_device *dev) { (void)dev; return 7; }
int LIBUSB_CALL libusb_get_device_speed(libusb_device *dev) { (void)dev; return LIBUSB_SPEED_FULL; }
int LIBUSB_CALL libusb_get_port_numbers(libusb_device *dev, uint8_t *p, int n) {
	(void)dev;
	if (n < 1)
		return LIBUSB_ERROR_OVERFLOW;
	p[0] = 1;
	return 1;
}

int LIBUSB_CALL libusb_get_device_descriptor(libusb_device *dev, struct libusb_device_descriptor *d) {
	(void)dev;
	unsigned char *b = devdesc;
	d->bLength = b[0];
	d->bDescriptorType = b[1];
	d->bcdUSB = b[2] | b[3] << 8;
	d->bDeviceClass = b[4];
	d->bDeviceSubClass = b[5];
	d->bDeviceProtocol = b[6];
	d->bMaxPacketSize0 = b[7];
	d->idVendor = b[8] | b[9] << 8;
	d->idProduct = b[10] | b[11] << 8;
	d->bcdDevice = b[12] | b[13] << 8;
	d->iManufacturer = b[14];
	d->iProduct = b[15];
	d->iSerialNumber = b[16];
	d->bNumConfigurations = b[17];
	return 0;
}

/* Parses the raw configuration descriptor as libusb does: descriptors
 * that follow an interface descriptor and are not endpoints become its
 * "extra" bytes; endpoint descriptors become the interface's endpoints. */
int LIBUSB_CALL libusb_get_config_descriptor(libusb_device *dev, uint8_t index, struct libusb_config_descriptor **out) {
	(void)dev;
	if (index != 0)
		return LIBUSB_ERROR_NOT_FOUND;
	struct libusb_config_descriptor *c = calloc(1, sizeof *c);
	struct libusb_interface *ifs = calloc(8, sizeof *ifs);
	unsigned char *b = cfgraw;
	c->bLength = b[0];
	c->bDescriptorType = b[1];
	c->wTotalLength = b[2] | b[3] << 8;
	c->bNumInterfaces = b[4];
	c->bConfigurationValue = b[5];
	c->iConfiguration = b[6];
	c->bmAttributes = b[7];
	c->MaxPower = b[8];
	c->interface = ifs;
	struct libusb_interface_descriptor *cur = NULL;
	int nifs = 0;
	for (int off = b[0]; off + 2 <= cfglen && b[off] >= 2 && off + b[off] <= cfglen; off += b[off]) {
		unsigned char *d = b + off;
		if (d[1] == LIBUSB_DT_INTERFACE && d[0] >= 9) {
			int k;
			for (k = 0; k < nifs; k++)
				if (ifs[k].altsetting[0].bInterfaceNumber == d[2])
					break;
			if (k == nifs) {
				if (nifs == 8)
					break;
				ifs[nifs++].altsetting = calloc(32, sizeof(struct libusb_interface_descriptor));
			}
			if (ifs[k].num_altsetting == 32)
				break;
			cur = (struct libusb_interface_descriptor *)&ifs[k].altsetting[ifs[k].num_altsetting++];
			cur->bLength = d[0];
			cur->bDescriptorType = d[1];
			cur->bInterfaceNumber = d[2];
			cur->bAlternateSetting = d[3];
			cur->bNumEndpoints = 0;
			cur->bInterfaceClass = d[5];
			cur->bInterfaceSubClass = d[6];
			cur->bInterfaceProtocol = d[7];
			cur->iInterface = d[8];
		} else if (cur && d[1] == LIBUSB_DT_ENDPOINT && d[0] >= 7) {
			struct libusb_endpoint_descriptor *eps = realloc((void *)cur->endpoint, (cur->bNumEndpoints + 1) * sizeof *eps);
			struct libusb_endpoint_descriptor *ep = &eps[cur->bNumEndpoints];
			memset(ep, 0, sizeof *ep);
			ep->bLength = d[0];
			ep->bDescriptorType = d[1];
			ep->bEndpointAddress = d[2];
			ep->bmAttributes = d[3];
			ep->wMaxPacketSize = d[4] | d[5] << 8;
			ep->bInterval = d[6];
			cur->endpoint = eps;
			cur->bNumEndpoints++;
		} else if (cur) {
			unsigned char *e = realloc((void *)cur->extra, cur->extra_length + d[0]);
			memcpy(e + cur->extra_length, d, d[0]);
			cur->extra = e;
			cur->extra_length += d[0];
		}
	}
	c->bNumInterfaces = nifs;
	*out = c;
	return 0;
}

void LIBUSB_CALL libusb_free_config_descriptor(struct libusb_config_descriptor *c) {
	if (!c)
		return;
	for (int i = 0; i < c->bNumInterfaces; i++) {
		for (int a = 0; a < c->interface[i].num_altsetting; a++) {
			free((void *)c->interface[i].altsetting[a].extra);
			free((void *)c->interface[i].altsetting[a].endpoint);
		}
		free((void *)c->interface[i].altsetting);
	}
	free((void *)c->interface);
	free(c);
}

int LIBUSB_CALL libusb_open(libusb_device *dev, libusb_device_handle **h) {
	(void)dev;
	*h = (libusb_device_handle *)&thehandle;
	return 0;
}
void LIBUSB_CALL libusb_close(libusb_device_handle *h) { (void)h; }
int LIBUSB_CALL libusb_get_configuration(libusb_device_handle *h, int *c) {
	(void)h;
	*c = cfgraw[5];
	return 0;
}
int LIBUSB_CALL libusb_set_configuration(libusb_device_handle *h, int c) { (void)h; (void)c; return 0; }
int LIBUSB_CALL libusb_claim_interface(libusb_device_handle *h, int i) { (void)h; (void)i; return 0; }
int LIBUSB_CALL libusb_release_interface(libusb_device_handle *h, int i) { (void)h; (void)i; return 0; }
int LIBUSB_CALL libusb_set_auto_detach_kernel_driver(libusb_device_handle *h, int e) { (void)h; (void)e; return 0; }
int LIBUSB_CALL libusb_detach_kernel_driver(libusb_device_handle *h, int i) { (void)h; (void)i; return 0; }
int LIBUSB_CALL libusb_reset_device(libusb_device_handle *h) { (void)h; return 0; }

int LIBUSB_CALL libusb_set_interface_alt_setting(libusb_device_handle *h, int iface, int alt) {
	(void)h;
	unsigned char m[3] = {'A', iface, alt};
	int32_t rc = LIBUSB_ERROR_NO_DEVICE;
	pthread_mutex_lock(&mu);
	if (sock >= 0 && !io(1, m, 3) && !io(0, &rc, 4)) {
	} else
		rc = LIBUSB_ERROR_NO_DEVICE;
	pthread_mutex_unlock(&mu);
	return rc;
}

int LIBUSB_CALL libusb_control_transfer(libusb_device_handle *h, uint8_t rt, uint8_t req, uint16_t val, uint16_t idx,
					unsigned char *data, uint16_t len, unsigned int timeout) {
	(void)h;
	(void)timeout;
	return xfer(rt, req, val, idx, data, len);
}

int LIBUSB_CALL libusb_get_string_descriptor_ascii(libusb_device_handle *h, uint8_t index, unsigned char *out, int len) {
	(void)h;
	unsigned char b[255];
	int n = xfer(0x80, 6, 0x0300 | index, 0x0409, b, sizeof b);
	if (n < 2)
		return n < 0 ? n : LIBUSB_ERROR_IO;
	int k = 0;
	for (int i = 2; i + 1 < n && k < len - 1; i += 2)
		out[k++] = b[i + 1] ? '?' : b[i];
	out[k] = 0;
	return k;
}

int LIBUSB_CALL libusb_kernel_driver_active(libusb_device_handle *h, int i) { (void)h; (void)i; return 0; }
libusb_device_handle *LIBUSB_CALL libusb_open_device_with_vid_pid(libusb_context *ctx, uint16_t vid, uint16_t pid) {
	(void)ctx;
	if (sock < 0 || (devdesc[8] | devdesc[9] << 8) != vid || (devdesc[10] | devdesc[11] << 8) != pid)
		return NULL;
	return (libusb_device_handle *)&thehandle;
}
int LIBUSB_CALL libusb_clear_halt(libusb_device_handle *h, unsigned char ep) { (void)h; (void)ep; return 0; }
libusb_device *LIBUSB_CALL libusb_get_device(libusb_device_handle *h) { (void)h; return (libusb_device *)&thedev; }
const char *LIBUSB_CALL libusb_error_name(int code) {
	switch (code) {
	case LIBUSB_ERROR_IO: return "LIBUSB_ERROR_IO";
	case LIBUSB_ERROR_NO_DEVICE: return "LIBUSB_ERROR_NO_DEVICE";
	case LIBUSB_ERROR_TIMEOUT: return "LIBUSB_ERROR_TIMEOUT";
	case LIBUSB_ERROR_PIPE: return "LIBUSB_ERROR_PIPE";
	}
	return code < 0 ? "LIBUSB_ERROR_OTHER" : "LIBUSB_SUCCESS";
}
const char *LIBUSB_CALL libusb_strerror(int code) { return libusb_error_name(code); }

/* A synchronous bulk transfer; an IN endpoint with nothing yet is polled
 * until the timeout (0: forever). */
int LIBUSB_CALL libusb_bulk_transfer(libusb_device_handle *h, unsigned char ep, unsigned char *data, int len, int *done,
				     unsigned int timeout) {
	(void)h;
	int32_t rc;
	for (unsigned int waited = 0;; waited++) {
		rc = bulk(ep, data, len);
		if (rc != LIBUSB_ERROR_TIMEOUT || (timeout && waited >= timeout))
			break;
		usleep(1000);
	}
	if (done)
		*done = rc < 0 ? 0 : rc;
	return rc < 0 ? rc : 0;
}

/* Asynchronous transfers wait in submission order and are carried out by
 * the event functions: OUT transfers first (a command must reach the model
 * before its answer is read), then IN transfers while the model has data. */
#define MAXPEND 256
static struct libusb_transfer *pend[MAXPEND];
static int cancelled[MAXPEND];
static int npend;

struct libusb_transfer *LIBUSB_CALL libusb_alloc_transfer(int iso) {
	return calloc(1, sizeof(struct libusb_transfer) + (size_t)iso * sizeof(struct libusb_iso_packet_descriptor));
}

void LIBUSB_CALL libusb_free_transfer(struct libusb_transfer *t) {
	if (t && (t->flags & LIBUSB_TRANSFER_FREE_BUFFER))
		free(t->buffer);
	free(t);
}

int LIBUSB_CALL libusb_submit_transfer(struct libusb_transfer *t) {
	if (t->type != LIBUSB_TRANSFER_TYPE_BULK)
		return LIBUSB_ERROR_NOT_SUPPORTED;
	pthread_mutex_lock(&pendmu);
	int rc = LIBUSB_ERROR_BUSY;
	if (npend < MAXPEND) {
		cancelled[npend] = 0;
		pend[npend++] = t;
		rc = 0;
		pthread_cond_broadcast(&pendcv);
	}
	pthread_mutex_unlock(&pendmu);
	return rc;
}

int LIBUSB_CALL libusb_cancel_transfer(struct libusb_transfer *t) {
	int rc = LIBUSB_ERROR_NOT_FOUND;
	pthread_mutex_lock(&pendmu);
	for (int i = 0; i < npend; i++)
		if (pend[i] == t) {
			cancelled[i] = 1;
			rc = 0;
		}
	pthread_mutex_unlock(&pendmu);
	return rc;
}

/* take removes and returns the next transfer to carry out: a cancelled one,
 * else the first OUT, else the first IN (skip INs at or before *skip). */
static struct libusb_transfer *take(int *wascancelled, int skipin) {
	struct libusb_transfer *t = NULL;
	int at = -1;
	pthread_mutex_lock(&pendmu);
	for (int i = 0; i < npend && at < 0; i++)
		if (cancelled[i])
			at = i;
	for (int i = 0; i < npend && at < 0; i++)
		if (!(pend[i]->endpoint & 0x80))
			at = i;
	for (int i = 0, in = 0; i < npend && at < 0; i++)
		if (pend[i]->endpoint & 0x80 && in++ >= skipin)
			at = i;
	if (at >= 0) {
		t = pend[at];
		*wascancelled = cancelled[at];
		for (int i = at; i + 1 < npend; i++) {
			pend[i] = pend[i + 1];
			cancelled[i] = cancelled[i + 1];
		}
		npend--;
	}
	pthread_mutex_unlock(&pendmu);
	return t;
}

static void putback(struct libusb_transfer *t) {
	pthread_mutex_lock(&pendmu);
	for (int i = npend; i > 0; i--) {
		pend[i] = pend[i - 1];
		cancelled[i] = cancelled[i - 1];
	}
	pend[0] = t;
	cancelled[0] = 0;
	npend++;
	pthread_mutex_unlock(&pendmu);
}

static void finish(struct libusb_transfer *t, enum libusb_transfer_status st, int n) {
	t->status = st;
	t->actual_length = n;
	int freeit = t->flags & LIBUSB_TRANSFER_FREE_TRANSFER;
	if (t->callback)
		t->callback(t);
	if (freeit)
		libusb_free_transfer(t);
}

/* run carries out what it can and returns how many transfers completed. */
static int run(void) {
	int done = 0, skipin = 0, c;
	struct libusb_transfer *t;
	while ((t = take(&c, skipin)) != NULL) {
		if (c) {
			finish(t, LIBUSB_TRANSFER_CANCELLED, 0);
			done++;
			continue;
		}
		int32_t rc = bulk(t->endpoint, t->buffer, t->length);
		if (rc == LIBUSB_ERROR_TIMEOUT) {
			putback(t); /* nothing for this IN transfer yet */
			break;
		}
		if (rc < 0)
			finish(t, rc == LIBUSB_ERROR_NO_DEVICE ? LIBUSB_TRANSFER_NO_DEVICE : LIBUSB_TRANSFER_ERROR, 0);
		else
			finish(t, LIBUSB_TRANSFER_COMPLETED, rc);
		done++;
	}
	(void)skipin;
	return done;
}

int LIBUSB_CALL libusb_handle_events_timeout_completed(libusb_context *ctx, struct timeval *tv, int *completed) {
	(void)ctx;
	if (run() > 0 || (completed && *completed))
		return 0;
	/* Sleep until a transfer is submitted (as real libusb sleeps in poll
	 * until an fd wakes it), at most 1 ms: an IN transfer may be waiting
	 * for the model, which has no fd to wake us. */
	long us = tv ? tv->tv_sec * 1000000L + tv->tv_usec : 1000;
	if (us > 1000)
		us = 1000;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += us * 1000;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&pendmu);
	int outs = 0;
	for (int i = 0; i < npend; i++)
		outs += !(pend[i]->endpoint & 0x80) || cancelled[i];
	if (!outs)
		pthread_cond_timedwait(&pendcv, &pendmu, &ts);
	pthread_mutex_unlock(&pendmu);
	run();
	return 0;
}

int LIBUSB_CALL libusb_handle_events_completed(libusb_context *ctx, int *completed) {
	struct timeval tv = {0, 1000};
	return libusb_handle_events_timeout_completed(ctx, &tv, completed);
}
