// The sketch as the Arduino builder compiles it: Arduino.h, the
// prototypes of functions used before their definition, the .ino.
#include <Arduino.h>

#include "ASCIITable.ino"
