/*
 * libusb-shim: a stand-in for libusb-1.0, loaded with LD_PRELOAD, that
 * presents one USB device whose requests are answered by a kiln DfuSe
 * device model over a Unix socket ($KILN_USB_SHIM). It lets unmodified
 * libusb programs (dfu-util, kiln's gousb adapter) talk to the model.
 *
 * Wire protocol (little-endian):
 *   'C' bmRequestType bRequest wValue(2) wIndex(2) wLength(2) [OUT data]
 *       -> rc(4, signed: bytes or a negative libusb error) [IN data]
 *   'A' interface alt -> rc(4)
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
#include <unistd.h>

static int sock = -1;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char devdesc[18];
static unsigned char cfgraw[4096];
static int cfglen;
static int thedev, thectx, thehandle;

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
 * "extra" bytes. Endpoints are not supported (a DFU interface has none). */
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
		for (int a = 0; a < c->interface[i].num_altsetting; a++)
			free((void *)c->interface[i].altsetting[a].extra);
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

int LIBUSB_CALL libusb_handle_events_timeout_completed(libusb_context *ctx, struct timeval *tv, int *completed) {
	(void)ctx;
	(void)tv;
	(void)completed;
	usleep(20000);
	return 0;
}
