// Blink for the Arduino Mega 2560 on the Arduino core: the LED on pin 13
// (PB7) toggles twice a second, and the count goes out on Serial.
#include <Arduino.h>

static unsigned long blinks;

void setup() {
	pinMode(LED_BUILTIN, OUTPUT);
	Serial.begin(115200);
}

void loop() {
	digitalWrite(LED_BUILTIN, (blinks & 1) ? HIGH : LOW);
	Serial.println(blinks++);
	delay(500);
}
