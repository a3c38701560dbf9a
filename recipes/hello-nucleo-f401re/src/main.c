// Hello for the NUCLEO-F401RE: a greeting, then a numbered tick, on USART2
// (PA2, the ST-LINK's virtual COM port) at 115200 8N1, straight from the
// reset clock (HSI, 16 MHz). Registers from RM0368 (STM32F401 reference
// manual). It waits on no clock-ready flag, so it also runs on QEMU's
// STM32F405 model (netduinoplus2), whose RCC is not modelled.
#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_AHB1ENR REG(0x40023830u)
#define RCC_APB1ENR REG(0x40023840u)
#define GPIOA_MODER REG(0x40020000u)
#define GPIOA_AFRL  REG(0x40020020u)
#define USART2_SR   REG(0x40004400u)
#define USART2_DR   REG(0x40004404u)
#define USART2_BRR  REG(0x40004408u)
#define USART2_CR1  REG(0x4000440Cu)

#define SR_TXE (1u << 7)

static void putch(char c) {
	while (!(USART2_SR & SR_TXE)) {
	}
	USART2_DR = (uint8_t)c;
}

static void puts_(const char *s) {
	while (*s) {
		putch(*s++);
	}
}

static void putnum(uint32_t n) {
	char buf[11];
	int i = 0;
	do {
		buf[i++] = (char)('0' + n % 10);
		n /= 10;
	} while (n);
	while (i) {
		putch(buf[--i]);
	}
}

static void wait(uint32_t n) {
	for (volatile uint32_t i = 0; i < n; i++) {
	}
}

int main(void) {
	RCC_AHB1ENR |= 1u << 0;  // GPIOAEN
	RCC_APB1ENR |= 1u << 17; // USART2EN
	(void)RCC_APB1ENR;
	// PA2: alternate function 7 (USART2_TX).
	GPIOA_MODER = (GPIOA_MODER & ~(3u << 4)) | (2u << 4);
	GPIOA_AFRL = (GPIOA_AFRL & ~(0xfu << 8)) | (7u << 8);
	USART2_BRR = 0x8Bu;                           // 16 MHz / 115200
	USART2_CR1 = (1u << 13) | (1u << 3);          // UE, TE
	puts_("hello from nucleo-f401re\r\n");
	for (uint32_t n = 1;; n++) {
		wait(400000u);
		puts_("tick ");
		putnum(n);
		puts_("\r\n");
	}
}
