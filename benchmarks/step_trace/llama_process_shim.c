/* LD_PRELOAD shim: times every llama_process() of llama-server (the peer, built by
 * benchmarks/peers/build-llama-server.sh) and logs the batch's shape, for analyze.py.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/shim.so benchmarks/step_trace/llama_process_shim.c -ldl
 *   SHIM_OUT=/tmp/ls.log LD_PRELOAD=/tmp/shim.so llama-server -m MODEL -np 8 -c 16384 -t 2
 *
 * One line per call: "start seconds n_tokens n_outputs id:tokens ...".
 * It reads llama.cpp's private struct llama_batch_ext (src/llama-batch.h) with the offsets of the
 * llama.cpp vendored by llama-cpp-python 0.3.36 on x86-64 libstdc++ (tokens vector at 64, a
 * token is 96 bytes: output flag at 16, its seq_ids unordered_set at 24). Check them against
 * that header before using it with another version. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int32_t (*process_fn)(void *, int, void *);
static FILE *out;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int32_t llama_process(void *ctx, int type, void *batch) {
    static process_fn real;
    if (!real) real = (process_fn)dlsym(RTLD_NEXT, "llama_process");
    if (!out) out = fopen(getenv("SHIM_OUT") ? getenv("SHIM_OUT") : "llama_process.log", "a");
    char *begin = *(char **)((char *)batch + 64), *end = *(char **)((char *)batch + 72);
    int n = (int)((end - begin) / 96), outputs = 0, per_seq[256] = {0};
    for (int i = 0; i < n; i++) {
        char *tok = begin + 96 * i;
        outputs += *(int8_t *)(tok + 16) != 0;
        char *node = *(char **)(tok + 24 + 16); /* the set's first node: {next, seq_id} */
        if (node) {
            int s = *(int *)(node + 8);
            if (s >= 0 && s < 256) per_seq[s]++;
        }
    }
    double t0 = now();
    int32_t rc = real(ctx, type, batch);
    fprintf(out, "%.6f %.6f %d %d", t0, now() - t0, n, outputs);
    for (int s = 0; s < 256; s++)
        if (per_seq[s]) fprintf(out, " %d:%d", s, per_seq[s]);
    fprintf(out, "\n");
    fflush(out);
    return rc;
}
