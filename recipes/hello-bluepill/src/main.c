// Hello for the Blue Pill: a greeting, then a numbered tick, on USART1
// (PA9, where the ROM bootloader and most USB-serial adapters are wired) at
// 115200 8N1, straight from the reset clock (HSI, 8 MHz). Registers from
// RM0008 (STM32F10x reference manual).
#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_APB2ENR REG(0x40021018u)
#define GPIOA_CRH   REG(0x40010804u)
#define USART1_SR   REG(0x40013800u)
#define USART1_DR   REG(0x40013804u)
#define USART1_BRR  REG(0x40013808u)
#define USART1_CR1  REG(0x4001380Cu)

#define SR_TXE (1u << 7)

static void putch(char c) {
	while (!(USART1_SR & SR_TXE)) {
	}
	USART1_DR = (uint8_t)c;
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
	RCC_APB2ENR |= (1u << 2) | (1u << 14); // IOPAEN, USART1EN
	(void)RCC_APB2ENR;
	// PA9: CNF=10 (alternate function push-pull), MODE=11 (50 MHz).
	GPIOA_CRH = (GPIOA_CRH & ~(0xfu << 4)) | (0xbu << 4);
	USART1_BRR = 0x45u;                  // 8 MHz / 115200
	USART1_CR1 = (1u << 13) | (1u << 3); // UE, TE
	puts_("hello from bluepill\r\n");
	for (uint32_t n = 1;; n++) {
		wait(300000u);
		puts_("tick ");
		putnum(n);
		puts_("\r\n");
	}
}
