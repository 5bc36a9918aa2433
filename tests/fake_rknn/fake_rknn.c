/* A test double of librknnrt.so: the real C ABI (rknn_double.h), a "model file" that is a small
 * text file naming the encoder's input and output shapes, and embeddings computed from the pixels,
 * so a test can tell which image went through the encoder.
 *
 * Model file (one key per line, '#' starts a comment):
 *   FAKE-RKNN                       first line, else rknn_init returns RKNN_ERR_MODEL_INVALID
 *   input H W C                     the input tensor (reported as dims [1, H, W, C], NHWC, UINT8)
 *   grid GH GW                      image tokens: a GH x GW grid of patches (n_image_tokens = GH*GW)
 *   embed E                         floats per token per output
 *   outputs N                       output tensors (N > 1: a "deepstack" encoder), default 1
 *   dims 2|3                        output dims [T, E] or [1, T, E] (default 3)
 *   delay_ms D                      rknn_run sleeps D ms
 *   fail init|run|outputs           that call fails with RKNN_ERR_FAIL
 * Token t is patch (t / GW, t % GW); element e of output j is the mean over that patch of channel
 * e % C, as the caller's value (uint8: v / 255, float32: v as sent), plus j. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rknn_double.h"

#ifndef FAKE_RKNN_VERSION
#define FAKE_RKNN_VERSION "2.3.2"
#endif

/* The vendor library's own literal form of its release (seen in the 1.6.0 build); without it
 * (FAKE_RKNN_NO_VERSION_LINE) the same text is assembled at run time, so no literal is in the file. */
#ifndef FAKE_RKNN_NO_VERSION_LINE
__attribute__((used)) static const char VERSION_LINE[] =
    "librknnrt version: " FAKE_RKNN_VERSION " (fake0000@2026-01-01T00:00:00)";
#else
static char VERSION_LINE[128];
__attribute__((constructor)) static void make_version_line(void) {
    snprintf(VERSION_LINE, sizeof VERSION_LINE, "librknnrt %s: %s (fake0000@2026-01-01T00:00:00)",
             "version", FAKE_RKNN_VERSION);
}
#endif

#define MAGIC 0x52464b4eU

typedef struct {
    uint32_t magic;
    int h, w, c, gh, gw, embed, n_out, out_dims, delay_ms;
    char fail[16];
    void* input;       /* the caller's input copied at rknn_inputs_set */
    int input_type;
    int input_fmt;
    int64_t last_run_us;
    int have_output;
    float* result;     /* n_out * tokens * embed floats after rknn_run */
} fake_model;

static long st_inits, st_destroys, st_live, st_runs, st_got, st_released, st_live_outputs;
static long st_last_type = -1, st_last_fmt = -1, st_last_size, st_want_float = -1, st_core_mask = -1;
static long st_query_short, st_init_size;

long fake_rknn_stat(const char* name) {
    struct { const char* n; long v; } t[] = {
        {"inits", st_inits}, {"destroys", st_destroys}, {"live_contexts", st_live},
        {"runs", st_runs}, {"outputs_got", st_got}, {"outputs_released", st_released},
        {"live_outputs", st_live_outputs}, {"last_input_type", st_last_type},
        {"last_input_fmt", st_last_fmt}, {"last_input_size", st_last_size},
        {"last_want_float", st_want_float}, {"core_mask", st_core_mask},
        {"query_short", st_query_short}, {"init_size", st_init_size},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(t[i].n, name) == 0) return t[i].v;
    return 0;
}

static fake_model* get(rknn_context ctx) {
    fake_model* m = (fake_model*)(uintptr_t)ctx;
    return (m && m->magic == MAGIC) ? m : NULL;
}

static int parse_model(const char* path, fake_model* m) {
    FILE* f = fopen(path, "r");
    if (!f) return RKNN_ERR_MODEL_INVALID;
    char line[256];
    int ok = fgets(line, sizeof line, f) && strncmp(line, "FAKE-RKNN", 9) == 0;
    m->n_out = 1;
    m->out_dims = 3;
    while (ok && fgets(line, sizeof line, f)) {
        char* hash = strchr(line, '#');
        if (hash) *hash = 0;
        char key[32] = {0};
        if (sscanf(line, "%31s", key) != 1) continue;
        if (strcmp(key, "input") == 0) ok = sscanf(line, "%*s %d %d %d", &m->h, &m->w, &m->c) == 3;
        else if (strcmp(key, "grid") == 0) ok = sscanf(line, "%*s %d %d", &m->gh, &m->gw) == 2;
        else if (strcmp(key, "embed") == 0) ok = sscanf(line, "%*s %d", &m->embed) == 1;
        else if (strcmp(key, "outputs") == 0) ok = sscanf(line, "%*s %d", &m->n_out) == 1;
        else if (strcmp(key, "dims") == 0) ok = sscanf(line, "%*s %d", &m->out_dims) == 1;
        else if (strcmp(key, "delay_ms") == 0) ok = sscanf(line, "%*s %d", &m->delay_ms) == 1;
        else if (strcmp(key, "fail") == 0) ok = sscanf(line, "%*s %15s", m->fail) == 1;
        else ok = 0;
    }
    fclose(f);
    ok = ok && m->h > 0 && m->w > 0 && m->c > 0 && m->gh > 0 && m->gw > 0 && m->embed > 0 &&
         m->n_out > 0 && m->gh <= m->h && m->gw <= m->w && (m->out_dims == 2 || m->out_dims == 3);
    return ok ? RKNN_SUCC : RKNN_ERR_MODEL_INVALID;
}

int rknn_init(rknn_context* context, void* model, uint32_t size, uint32_t flag, rknn_init_extend* extend) {
    (void)flag;
    (void)extend;
    st_init_size = size;
    if (!context || !model) return RKNN_ERR_PARAM_INVALID;
    if (size != 0) return RKNN_ERR_MODEL_INVALID; /* the double reads model files by path only */
    fake_model* m = calloc(1, sizeof *m);
    if (!m) return RKNN_ERR_MALLOC_FAIL;
    int rc = parse_model((const char*)model, m);
    if (rc == RKNN_SUCC && strcmp(m->fail, "init") == 0) rc = RKNN_ERR_FAIL;
    if (rc != RKNN_SUCC) {
        free(m);
        return rc;
    }
    m->magic = MAGIC;
    printf("I RKNN: [00:00:00.000] RKNN Runtime Information, %s\n", VERSION_LINE);
    fflush(stdout);
    *context = (rknn_context)(uintptr_t)m;
    st_inits++;
    st_live++;
    return RKNN_SUCC;
}

int rknn_destroy(rknn_context context) {
    fake_model* m = get(context);
    if (!m) return RKNN_ERR_CTX_INVALID;
    m->magic = 0;
    free(m->input);
    free(m->result);
    free(m);
    st_destroys++;
    st_live--;
    return RKNN_SUCC;
}

static int tokens(const fake_model* m) { return m->gh * m->gw; }

static void attr_for(const fake_model* m, int output, uint32_t index, rknn_tensor_attr* a) {
    memset(a, 0, sizeof *a);
    a->index = index;
    if (!output) {
        a->n_dims = 4;
        a->dims[0] = 1;
        a->dims[1] = (uint32_t)m->h;
        a->dims[2] = (uint32_t)m->w;
        a->dims[3] = (uint32_t)m->c;
        snprintf(a->name, sizeof a->name, "pixel");
        a->n_elems = (uint32_t)(m->h * m->w * m->c);
        a->size = a->n_elems;
        a->fmt = RKNN_TENSOR_NHWC;
        a->type = RKNN_TENSOR_UINT8;
    } else {
        uint32_t d = 0;
        if (m->out_dims == 3) a->dims[d++] = 1;
        a->dims[d++] = (uint32_t)tokens(m);
        a->dims[d++] = (uint32_t)m->embed;
        a->n_dims = d;
        snprintf(a->name, sizeof a->name, "embeds_%u", index);
        a->n_elems = (uint32_t)(tokens(m) * m->embed);
        a->size = a->n_elems * 2;
        a->fmt = RKNN_TENSOR_UNDEFINED;
        a->type = RKNN_TENSOR_FLOAT16;
    }
    a->qnt_type = RKNN_TENSOR_QNT_NONE;
    a->scale = 1.0f;
    a->size_with_stride = a->size;
}

int rknn_query(rknn_context context, rknn_query_cmd cmd, void* info, uint32_t size) {
    fake_model* m = get(context);
    if (!m) return RKNN_ERR_CTX_INVALID;
    if (!info) return RKNN_ERR_PARAM_INVALID;
    uint32_t need;
    switch (cmd) {
    case RKNN_QUERY_IN_OUT_NUM: need = sizeof(rknn_input_output_num); break;
    case RKNN_QUERY_INPUT_ATTR:
    case RKNN_QUERY_OUTPUT_ATTR: need = sizeof(rknn_tensor_attr); break;
    case RKNN_QUERY_PERF_RUN: need = sizeof(rknn_perf_run); break;
    case RKNN_QUERY_SDK_VERSION: need = sizeof(rknn_sdk_version); break;
    default: return RKNN_ERR_PARAM_INVALID;
    }
    if (size < need) { /* what the real runtime checks: "info_len(%d) < sizeof(...)" */
        st_query_short++;
        return RKNN_ERR_PARAM_INVALID;
    }
    if (cmd == RKNN_QUERY_IN_OUT_NUM) {
        rknn_input_output_num* n = info;
        n->n_input = 1;
        n->n_output = (uint32_t)m->n_out;
    } else if (cmd == RKNN_QUERY_INPUT_ATTR || cmd == RKNN_QUERY_OUTPUT_ATTR) {
        rknn_tensor_attr* a = info;
        uint32_t limit = cmd == RKNN_QUERY_INPUT_ATTR ? 1 : (uint32_t)m->n_out;
        if (a->index >= limit) return RKNN_ERR_PARAM_INVALID;
        attr_for(m, cmd == RKNN_QUERY_OUTPUT_ATTR, a->index, a);
    } else if (cmd == RKNN_QUERY_PERF_RUN) {
        ((rknn_perf_run*)info)->run_duration = m->last_run_us;
    } else {
        rknn_sdk_version* v = info;
        memset(v, 0, sizeof *v);
        snprintf(v->api_version, sizeof v->api_version, "%s", VERSION_LINE + strlen("librknnrt version: "));
        snprintf(v->drv_version, sizeof v->drv_version, "0.9.8");
    }
    return RKNN_SUCC;
}

#ifndef FAKE_RKNN_OMIT_SET_CORE_MASK
int rknn_set_core_mask(rknn_context context, rknn_core_mask core_mask) {
    if (!get(context)) return RKNN_ERR_CTX_INVALID;
    if ((int)core_mask < 0 || (int)core_mask > 7) return RKNN_ERR_PARAM_INVALID;
    st_core_mask = core_mask;
    return RKNN_SUCC;
}
#endif

int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[]) {
    fake_model* m = get(context);
    if (!m) return RKNN_ERR_CTX_INVALID;
    if (n_inputs != 1 || !inputs || inputs[0].index != 0 || !inputs[0].buf) return RKNN_ERR_PARAM_INVALID;
    rknn_input* in = &inputs[0];
    st_last_type = in->type;
    st_last_fmt = in->fmt;
    st_last_size = in->size;
    size_t elem = in->type == RKNN_TENSOR_UINT8 ? 1 : in->type == RKNN_TENSOR_FLOAT32 ? 4 : 0;
    size_t want = (size_t)m->h * (size_t)m->w * (size_t)m->c * elem;
    if (in->pass_through || elem == 0 || (in->fmt != RKNN_TENSOR_NHWC && in->fmt != RKNN_TENSOR_NCHW) ||
        in->size != want)
        return RKNN_ERR_INPUT_INVALID;
    void* copy = malloc(want);
    if (!copy) return RKNN_ERR_MALLOC_FAIL;
    memcpy(copy, in->buf, want);
    free(m->input);
    m->input = copy;
    m->input_type = in->type;
    m->input_fmt = in->fmt;
    return RKNN_SUCC;
}

static double value_at(const fake_model* m, int y, int x, int c) {
    size_t i = m->input_fmt == RKNN_TENSOR_NHWC ? ((size_t)y * m->w + x) * m->c + c
                                                 : ((size_t)c * m->h + y) * m->w + x;
    if (m->input_type == RKNN_TENSOR_UINT8) return ((const uint8_t*)m->input)[i] / 255.0;
    return ((const float*)m->input)[i];
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int rknn_run(rknn_context context, rknn_run_extend* extend) {
    (void)extend;
    fake_model* m = get(context);
    if (!m) return RKNN_ERR_CTX_INVALID;
    if (!m->input) return RKNN_ERR_INPUT_INVALID;
    if (strcmp(m->fail, "run") == 0) return RKNN_ERR_FAIL;
    int64_t t0 = now_us();
    if (m->delay_ms > 0) {
        struct timespec ts = {m->delay_ms / 1000, (long)(m->delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    int n_tok = tokens(m);
    float* r = malloc(sizeof(float) * (size_t)m->n_out * n_tok * m->embed);
    if (!r) return RKNN_ERR_MALLOC_FAIL;
    double* mean = calloc((size_t)m->c, sizeof(double));
    for (int t = 0; t < n_tok; t++) {
        int py = t / m->gw, px = t % m->gw;
        int y0 = py * m->h / m->gh, y1 = (py + 1) * m->h / m->gh;
        int x0 = px * m->w / m->gw, x1 = (px + 1) * m->w / m->gw;
        for (int c = 0; c < m->c; c++) {
            double s = 0;
            for (int y = y0; y < y1; y++)
                for (int x = x0; x < x1; x++) s += value_at(m, y, x, c);
            mean[c] = s / ((double)(y1 - y0) * (x1 - x0));
        }
        for (int j = 0; j < m->n_out; j++)
            for (int e = 0; e < m->embed; e++)
                r[((size_t)j * n_tok + t) * m->embed + e] = (float)(mean[e % m->c] + j);
    }
    free(mean);
    free(m->result);
    m->result = r;
    m->have_output = 1;
    m->last_run_us = now_us() - t0;
    st_runs++;
    return RKNN_SUCC;
}

int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[], rknn_output_extend* extend) {
    (void)extend;
    fake_model* m = get(context);
    if (!m) return RKNN_ERR_CTX_INVALID;
    if (!outputs || n_outputs == 0 || n_outputs > (uint32_t)m->n_out) return RKNN_ERR_PARAM_INVALID;
    if (!m->have_output || strcmp(m->fail, "outputs") == 0) return RKNN_ERR_OUTPUT_INVALID;
    size_t bytes = sizeof(float) * (size_t)tokens(m) * m->embed;
    for (uint32_t i = 0; i < n_outputs; i++) {
        rknn_output* o = &outputs[i];
        st_want_float = o->want_float;
        if (o->index >= (uint32_t)m->n_out) return RKNN_ERR_PARAM_INVALID;
        const float* src = m->result + (size_t)o->index * tokens(m) * m->embed;
        if (o->is_prealloc) {
            if (!o->buf || o->size < bytes) return RKNN_ERR_PARAM_INVALID;
            memcpy(o->buf, src, bytes);
        } else {
            o->buf = malloc(bytes);
            if (!o->buf) return RKNN_ERR_MALLOC_FAIL;
            memcpy(o->buf, src, bytes);
            o->size = (uint32_t)bytes;
            st_live_outputs++;
        }
    }
    st_got++;
    return RKNN_SUCC;
}

int rknn_outputs_release(rknn_context context, uint32_t n_ouputs, rknn_output outputs[]) {
    if (!get(context)) return RKNN_ERR_CTX_INVALID;
    if (!outputs) return RKNN_ERR_PARAM_INVALID;
    for (uint32_t i = 0; i < n_ouputs; i++) {
        if (!outputs[i].is_prealloc && outputs[i].buf) {
            free(outputs[i].buf);
            outputs[i].buf = NULL;
            st_live_outputs--;
        }
    }
    st_released++;
    return RKNN_SUCC;
}
