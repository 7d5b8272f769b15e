/*
 * Link stubs for the aarch64 oracle (scripts/gen-golden.sh --aarch64).
 *
 * That oracle is linked from ggml.c and ggml-quants.c alone, cross-compiled
 * with a C-only aarch64 toolchain (no C++ standard library headers), so the
 * symbols ggml.c takes from ggml's C++ files are defined here. Quantizing and
 * dequantizing never reach the backend functions; they abort if ever called.
 * The critical section guards ggml's one-time table initialisation.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

void ggml_critical_section_start(void) { pthread_mutex_lock(&lock); }
void ggml_critical_section_end(void) { pthread_mutex_unlock(&lock); }

static void unreachable_backend(const char *name) {
    fprintf(stderr, "aarch64 oracle: %s called (not linked in this build)\n", name);
    abort();
}

int ggml_backend_buffer_get_usage(void *buffer) {
    (void)buffer;
    unreachable_backend("ggml_backend_buffer_get_usage");
    return 0;
}

void ggml_backend_tensor_memset(void *tensor, int value, size_t offset, size_t size) {
    (void)tensor; (void)value; (void)offset; (void)size;
    unreachable_backend("ggml_backend_tensor_memset");
}

void ggml_backend_tensor_set(void *tensor, const void *data, size_t offset, size_t size) {
    (void)tensor; (void)data; (void)offset; (void)size;
    unreachable_backend("ggml_backend_tensor_set");
}
