/* libzoo.so: a small shared library of ours whose writable globals (.data and .bss of a
 * library mapped by the dynamic loader) memcheck writes and checks. */
#include <stddef.h>
#include <stdint.h>

#define ZOO_WORDS 4096 /* 32 KiB: 8 pages */

/* .data of the library (initialised, so it lives in the file-backed private mapping). */
uint64_t zoo_data[ZOO_WORDS] = {1};
/* .bss of the library. */
static uint64_t zoo_bss[ZOO_WORDS];
/* The iteration the library's arrays were last written for, kept here as a second copy of
 * memcheck's counter. */
uint64_t zoo_iter = 0;

uint64_t *zoo_data_array(void) { return zoo_data; }
uint64_t *zoo_bss_array(void) { return zoo_bss; }
size_t zoo_words(void) { return ZOO_WORDS; }
uint64_t *zoo_counter(void) { return &zoo_iter; }
