// Blink for the Blue Pill: the on-board LED is on PC13 (lit when low).
// Registers from RM0008 (STM32F10x reference manual).
#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_APB2ENR REG(0x40021018u)
#define GPIOC_CRH   REG(0x40011004u)
#define GPIOC_ODR   REG(0x4001100Cu)

#define LED_PIN 13u

// In .data so the reset handler's copy is what gives the delay its value.
static volatile uint32_t half_period = 300000u;
static volatile uint32_t toggles;

static void wait(uint32_t n) {
	for (volatile uint32_t i = 0; i < n; i++) {
	}
}

int main(void) {
	RCC_APB2ENR |= 1u << 4; // IOPCEN
	(void)RCC_APB2ENR;
	// PC13: CNF=00 (push-pull), MODE=10 (output, 2 MHz).
	GPIOC_CRH = (GPIOC_CRH & ~(0xfu << ((LED_PIN - 8) * 4))) | (0x2u << ((LED_PIN - 8) * 4));
	for (;;) {
		GPIOC_ODR ^= 1u << LED_PIN;
		toggles++;
		wait(half_period);
	}
}
