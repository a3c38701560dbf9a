// Blink as an unmodified Arduino sketch: no wrapper, no prototypes, no
// flags in the recipe. kiln merges it, adds #include <Arduino.h> and the
// prototypes (setup and loop) as arduino-builder does, and builds it with
// the flags of the core's platform.txt for the board's boards.txt entry.

void setup() {
  pinMode(LED_BUILTIN, OUTPUT);
}

void loop() {
  blink(1000);
}

// Used in loop() before its definition: the generated prototype makes
// that legal C++.
void blink(unsigned long ms) {
  digitalWrite(LED_BUILTIN, HIGH);
  delay(ms);
  digitalWrite(LED_BUILTIN, LOW);
  delay(ms);
}
