/*
 * fake_rkllm.c -- a test double of the RKLLM runtime (librkllmrt.so). Tests only: rkllmd never
 * loads it unless told to. It implements the C interface of rkllm_double.h for the ABI chosen
 * with -DRKLLM_ABI and "generates" deterministic text from the prompt:
 *
 *   token i (0-based) = (i ? " " : "") + WORD[i % n_words], WORD = prompt word in ASCII upper case;
 *   a natural FINISH comes after n_words tokens (or [[len=N]] / FAKE_RKLLM_LEN), capped by
 *   max_new_tokens (init value, or in ABI 13 the per-run value when > 0).
 *
 * Directives inside the prompt (removed before the words are taken), each also settable as a
 * default through the environment at rkllm_init:
 *   [[delay_ms=N]]  FAKE_RKLLM_DELAY_MS  sleep N ms before each token
 *   [[len=N]]       FAKE_RKLLM_LEN       tokens before a natural FINISH
 *   [[fail_at=N]]   FAKE_RKLLM_FAIL_AT   ERROR state at token N (1-based); rkllm_run returns -1
 *   [[crash_at=N]]  (prompt only)        SIGSEGV at token N, like a native runtime bug
 *   [[hang_at=N]]   (prompt only)        stop producing tokens at token N, ignoring abort
 *   [[sigill_at=N]] (prompt only)        SIGILL at token N, like a build for another CPU
 *   [[split_utf8]]  FAKE_RKLLM_SPLIT_UTF8  tokens 2 and 3 become " €" split in two callbacks:
 *                                        WAITING " \xE2\x82", then NORMAL "\xAC"
 *   [[say=B64]]     (prompt only)        emit the base64-decoded text verbatim instead of words, in
 *                                        pieces of [[chunk=N]] bytes (default 3), so that markup
 *                                        such as <tool_call> arrives split across tokens; ignored in
 *                                        a run with role "tool" (a tool result gets the usual words)
 *                                        ("@IMAGES@" in it, or in a script's text, becomes the
 *                                        words of the run's images: see Images below)
 *   [[say_tools]]   (prompt only)        emit the last rkllm_set_function_tools JSON verbatim
 *   [[think=B64]]   (prompt only)        a thinking model (Qwen3): when the run's enable_thinking is
 *                                        set, "<think>\n" + the decoded thought + "\n</think>\n\n"
 *                                        comes before the reply (in the same pieces as [[say]]);
 *                                        without it the model answers at once, as Qwen3 does when
 *                                        its template closes the block (last_enable_thinking: 0/1).
 *                                        After rkllm_set_chat_template the switch is ignored, as the
 *                                        vendor documents: it thinks unless that postfix ends with
 *                                        the closed empty block "</think>\n\n"
 *   FAKE_RKLLM_SCRIPT=PATH (environment only) canned replies for runs whose prompt a real client
 *                                        writes, so no directive can be put in it (Home Assistant's):
 *                                        each line "ROLE<TAB>NEEDLE<TAB>B64"; a run with no [[say]]
 *                                        whose role is ROLE (or "*") and whose prompt_input contains
 *                                        NEEDLE emits the decoded text as [[say]] would (first
 *                                        matching line wins; a file that cannot be read is an
 *                                        "E rkllm:" line and the usual words)
 *   [[prefill_us=N]] FAKE_RKLLM_PREFILL_US  prefill cost: sleep N microseconds per prompt token
 *                                        that is not already in the KV cache, before token 1
 *
 * Prefill and prefix reuse (a model of the runtime's, tokens = whitespace-separated words):
 * a run's prompt is the system prompt (rkllm_set_chat_template's, then the tools JSON of
 * rkllm_set_function_tools), the template prefix, prompt_input and the postfix. The system
 * prompt's KV stays in memory between runs once prefilled (the runtime's "system cache"), until
 * the system prompt or tools change or rkllm_clear_kv_cache(keep_system_prompt=0); a loaded
 * prompt cache covers the prompt's first words when they equal the words it was saved from.
 * Only the remaining words cost prefill_us each. A run with prompt_cache_params->save_prompt_cache
 * writes the cache file (default ./prompt_cache.bin) after its prefill: a header naming the
 * runtime version, the model path and size, then the prompt's words. rkllm_load_prompt_cache
 * refuses (-1, with an "E rkllm:" line) a file that is missing, not such a cache, or saved by
 * another runtime version or for another model, and a second load without a release between.
 * FAKE_RKLLM_FAIL_INIT=1 or a model path containing "fail-init" makes rkllm_init return -1.
 * Build options: -DFAKE_RKLLM_VERSION="X" (the release in the SDK line), -DFAKE_RKLLM_NO_SDK_LINE,
 * -DFAKE_RKLLM_OMIT_<function> for rkllm_load_lora, rkllm_set_function_tools,
 * rkllm_set_cross_attn_params, rkllm_load_prompt_cache and rkllm_release_prompt_cache (a build that
 * does not export it), -DFAKE_RKLLM_ANDROID (an Android
 * ident note, as the NDK's crtbegin_so.o adds).
 * What a run receives is checked against this build's layout: input_size is sizeof(RKLLMInput) as
 * read here, input_stray_bytes the nonzero bytes of a prompt input's union after the pointer (0 for
 * a caller whose struct has this size and is zeroed). Every ABI takes a multimodal input (its
 * prompt is the text; n_image, n_video and, 131, n_audio / n_audio_tokens / audio_start /
 * audio_content are recorded), and ABI 131 refuses, as the 1.3.1 runtime does, a role "tool" input
 * that is not JSON text (-1, an "E rkllm:" line, tool_not_json).
 * Images (n_image > 0; 1.2.0 has one, without a count): the image tags are the input's
 * (image_start/end/content, 1.3+) or rkllm_init's (img_start/end/content, 1.2.x); the embedding
 * width is told with [[embed_dim=N]] or FAKE_RKLLM_EMBED_DIM (the real runtime knows its own).
 * The double's rules, not known of the runtime: a NULL image_embed, zero n_image_tokens, an
 * unknown width, or a prompt whose "<image>" count is not n_image is refused (-1, an "E rkllm:"
 * line, image_refused). It answers with what it saw: each "<image>" of the prompt becomes the word
 * IMAGE<k>:<tokens>X<width>:M<mean>:F<first>:L<last> (k from 1; the embedding's mean, its first
 * token's first value and its last token's first value, each x1000 and rounded), so the generated
 * words carry it; recorded: last_n_image_tokens, last_image_width, last_image_height,
 * image_placeholders, and the strings image_start, image_end, image_content, images (those words).
 * Introspection for tests: fake_rkllm_stat(name), fake_rkllm_str(name), fake_rkllm_reset_stats().
 */
#define _GNU_SOURCE
#include "rkllm_double.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef FAKE_RKLLM_VERSION
#define FAKE_RKLLM_VERSION "0.0.0"
#endif

/*
 * The strings the vendor library holds, in the forms found in its string dump (1.2.1b1, aarch64).
 * The release number is only in the SDK line; the "rkllm-runtime version" text is a printf format
 * filled in at init; the rknn line is the bundled rknn runtime's own version (a decoy for
 * anything matching a bare "version:"). `used` keeps every one in .rodata at any -O level.
 * -DFAKE_RKLLM_NO_SDK_LINE leaves the SDK line out (a library that cannot be placed by string).
 */
#ifndef FAKE_RKLLM_NO_SDK_LINE
__attribute__((used)) static const char sdk_line[] =
    "RKLLM SDK (version: " FAKE_RKLLM_VERSION " | target: Linux | build: 0fa4e000 2026-01-01 00:00:00)";
#endif
__attribute__((used)) static const char version_format[] =
    "I rkllm: rkllm-runtime version: %s, rknpu driver version: %s, platform: %s";
__attribute__((used)) static const char rknn_lib_line[] = "rknn llm lib version: 2.3.3b0 (fake)";

#ifdef FAKE_RKLLM_ANDROID
/* The note every NDK-linked binary carries (bionic's crtbrand.S): name "Android", type 1, the API
 * level as descriptor, in an allocated SHT_NOTE section, so it lands in a PT_NOTE segment. */
__asm__(".pushsection .note.android.ident,\"a\",%note\n"
        ".balign 4\n"
        ".long 2f-1f\n"
        ".long 4f-3f\n"
        ".long 1\n"
        "1: .ascii \"Android\\0\"\n"
        "2: .balign 4\n"
        "3: .long 30\n"
        "4:\n"
        ".popsection\n");
#endif

#define FAKE_MAGIC 0x524b4c4du

typedef struct {
    uint32_t magic;
    char *model_path;
    RKLLMParam param;
#if RKLLM_FAMILY_F
    RKLLMCallback cb;
#else
    LLMResultCallback cb;
#endif
    atomic_int abort_flag;
    atomic_int running;
    int kv_size;
    int system_tokens;
    int turns;
    int loras;
    char *tpl_system, *tpl_prefix, *tpl_postfix; /* rkllm_set_chat_template's strings */
    char *tools;        /* rkllm_set_function_tools' JSON, or NULL */
    int sys_cached;     /* the system prompt's KV is in memory (an earlier run prefilled it) */
    char *pc_words;     /* the loaded prompt cache: the words it was saved from, or NULL */
    int env_delay_ms, env_len, env_fail_at, env_split, env_prefill_us;
    int env_embd, env_vocab, env_last_only; /* the vector modes' sizes (see do_vectors) */
    pthread_t async_thread;
    int async_active;
} Fake;

/* ---- introspection counters (process-wide) --------------------------------------------- */

enum {
    S_INIT, S_RUN, S_DESTROY, S_ABORT, S_CHAT_TEMPLATE, S_PAUSES, S_NONZERO_RC, S_LAST_RC,
    S_LAST_LIMIT, S_LAST_TOP_K, S_LAST_TEMP_MILLI, S_LAST_KEEP_HISTORY, S_LAST_N_BATCH,
    S_LAST_CPUS_MASK, S_LAST_CPUS_NUM, S_LIVE, S_CLEAR_KV, S_TOOLS, S_CROSS_ATTN, S_LORA,
    S_CALLBACK_TID_MATCH, S_PREFILL_COMPUTED, S_PREFILL_REUSED, S_PC_USED, S_PC_SAVES, S_PC_SAVE_FAILED,
    S_PC_LOADS, S_PC_LOAD_FAILED, S_PC_RELEASES, S_PC_LOADED_TOKENS, S_INPUT_SIZE, S_INPUT_STRAY,
    S_MM_N_IMAGE, S_MM_N_VIDEO, S_MM_N_AUDIO, S_MM_N_AUDIO_TOKENS, S_TOOL_NOT_JSON,
    S_MM_N_IMAGE_TOKENS, S_MM_IMAGE_WIDTH, S_MM_IMAGE_HEIGHT, S_MM_PLACEHOLDERS, S_MM_REFUSED,
    S_ENABLE_THINKING, S_COUNT
};
static const char *stat_names[S_COUNT] = {
    "init", "run", "destroy", "abort", "set_chat_template", "pauses", "nonzero_cb_rc", "last_cb_rc",
    "last_limit", "last_top_k", "last_temperature_milli", "last_keep_history", "last_n_batch",
    "last_cpus_mask", "last_cpus_num", "live", "clear_kv_cache", "set_function_tools",
    "set_cross_attn_params", "load_lora", "callback_on_caller_thread",
    "last_prefill_computed", "last_prefill_reused", "last_prompt_cache_used", "prompt_cache_saves",
    "prompt_cache_save_failed", "prompt_cache_loads", "prompt_cache_load_failed", "prompt_cache_releases",
    "prompt_cache_loaded_tokens", "input_size", "input_stray_bytes", "last_n_image", "last_n_video",
    "last_n_audio", "last_n_audio_tokens", "tool_not_json",
    "last_n_image_tokens", "last_image_width", "last_image_height", "image_placeholders", "image_refused",
    "last_enable_thinking",
};
static atomic_int stats[S_COUNT];
static pthread_mutex_t str_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_system[65536], last_role[64], last_prompt[65536], last_tools[65536], last_pc_error[512];
static char last_audio_start[256], last_audio_content[256];
static char last_image_start[256], last_image_end[256], last_image_content[256], last_images[4096];

int fake_rkllm_stat(const char *name) {
    for (int i = 0; name && i < S_COUNT; i++)
        if (strcmp(stat_names[i], name) == 0) return atomic_load(&stats[i]);
    return -12345;
}

const char *fake_rkllm_str(const char *name) {
    if (!name) return "";
    if (strcmp(name, "system_prompt") == 0) return last_system;
    if (strcmp(name, "role") == 0) return last_role;
    if (strcmp(name, "prompt") == 0) return last_prompt;
    if (strcmp(name, "tools") == 0) return last_tools;
    if (strcmp(name, "prompt_cache_error") == 0) return last_pc_error;
    if (strcmp(name, "audio_start") == 0) return last_audio_start;
    if (strcmp(name, "audio_content") == 0) return last_audio_content;
    if (strcmp(name, "image_start") == 0) return last_image_start;
    if (strcmp(name, "image_end") == 0) return last_image_end;
    if (strcmp(name, "image_content") == 0) return last_image_content;
    if (strcmp(name, "images") == 0) return last_images;
    if (strcmp(name, "version") == 0) return FAKE_RKLLM_VERSION;
    return "";
}

void fake_rkllm_reset_stats(void) {
    for (int i = 0; i < S_COUNT; i++)
        if (i != S_LIVE) atomic_store(&stats[i], 0);
}

static void copy_str(char *dst, size_t cap, const char *src) {
    pthread_mutex_lock(&str_lock);
    snprintf(dst, cap, "%s", src ? src : "");
    pthread_mutex_unlock(&str_lock);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static Fake *as_fake(LLMHandle h) {
    Fake *f = (Fake *)h;
    return (f && f->magic == FAKE_MAGIC) ? f : NULL;
}

static int env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    return (v && *v) ? atoi(v) : dflt;
}

static void sleep_ms(int ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static int count_words(const char *s) {
    int n = 0, in = 0;
    for (; s && *s; s++) {
        if (isspace((unsigned char)*s)) in = 0;
        else if (!in) { in = 1; n++; }
    }
    return n;
}

typedef struct {
    int delay_ms, len, fail_at, split, crash_at, hang_at, sigill_at, prefill_us;
    char *say;    /* exact text to emit ([[say=...]]), or NULL */
    char *think;  /* the thought of [[think=...]], or NULL */
    int chunk;    /* bytes per token of the exact text */
    char *buf;    /* prompt copy with directives blanked out, words upper-cased */
    char **words; /* pointers into buf */
    int n_words;
} Plan;

/* Reads [[key=value]] / [[key]] directives, blanks them out and splits the rest into words. */
/* Standard base64 into a fresh NUL-terminated string (invalid characters are skipped). */
static char *b64_decode(const char *in) {
    size_t n = strlen(in);
    char *out = calloc(n * 3 / 4 + 4, 1);
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;
    for (const char *c = in; *c && *c != '='; c++) {
        const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *hit = strchr(tab, *c);
        if (!hit) continue;
        acc = (acc << 6) | (unsigned)(hit - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xFF);
        }
    }
    return out;
}

static void plan_parse(Plan *p, const char *prompt) {
    p->buf = strdup(prompt ? prompt : "");
    char *s = p->buf;
    for (char *open = strstr(s, "[["); open; open = strstr(open, "[[")) {
        char *close = strstr(open, "]]");
        if (!close) break;
        *close = '\0';
        char *key = open + 2, *val = strchr(key, '=');
        if (val) *val++ = '\0';
        if (strcmp(key, "delay_ms") == 0 && val) p->delay_ms = atoi(val);
        else if (strcmp(key, "len") == 0 && val) p->len = atoi(val);
        else if (strcmp(key, "fail_at") == 0 && val) p->fail_at = atoi(val);
        else if (strcmp(key, "split_utf8") == 0) p->split = 1;
        else if (strcmp(key, "crash_at") == 0 && val) p->crash_at = atoi(val);
        else if (strcmp(key, "hang_at") == 0 && val) p->hang_at = atoi(val);
        else if (strcmp(key, "sigill_at") == 0 && val) p->sigill_at = atoi(val);
        else if (strcmp(key, "chunk") == 0 && val) p->chunk = atoi(val);
        else if (strcmp(key, "prefill_us") == 0 && val) p->prefill_us = atoi(val);
        else if (strcmp(key, "say") == 0 && val) {
            free(p->say);
            p->say = b64_decode(val);
        } else if (strcmp(key, "think") == 0 && val) {
            free(p->think);
            p->think = b64_decode(val);
        } else if (strcmp(key, "say_tools") == 0) {
            free(p->say);
            pthread_mutex_lock(&str_lock);
            p->say = strdup(last_tools);
            pthread_mutex_unlock(&str_lock);
        }
        memset(open, ' ', (size_t)(close + 2 - open));
        open = close + 2;
    }
    p->words = calloc(strlen(p->buf) / 2 + 2, sizeof(char *));
    char *save = NULL;
    for (char *w = strtok_r(p->buf, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
        for (char *c = w; *c; c++) *c = (char)toupper((unsigned char)*c);
        p->words[p->n_words++] = w;
    }
    if (p->n_words == 0) p->words[p->n_words++] = "EMPTY";
}

/* The FAKE_RKLLM_SCRIPT reply for a run (a fresh string), or NULL. Read at every run, so a test
 * can rewrite the file between turns. */
static char *script_reply(const char *role, const char *prompt) {
    const char *path = getenv("FAKE_RKLLM_SCRIPT");
    if (!path || !*path) return NULL;
    FILE *fp = fopen(path, "r");
    if (!fp) {
        printf("E rkllm: fake script %s cannot be read\n", path);
        fflush(stdout);
        return NULL;
    }
    char *line = NULL, *out = NULL;
    size_t cap = 0;
    while (!out && getline(&line, &cap, fp) > 0) {
        line[strcspn(line, "\r\n")] = '\0';
        char *needle = strchr(line, '\t');
        if (!needle) continue;
        *needle++ = '\0';
        char *b64 = strchr(needle, '\t');
        if (!b64) continue;
        *b64++ = '\0';
        if ((strcmp(line, "*") == 0 || strcmp(line, role) == 0) && strstr(prompt, needle)) out = b64_decode(b64);
    }
    free(line);
    fclose(fp);
    return out;
}

static void plan_free(Plan *p) {
    free(p->say);
    free(p->think);
    free(p->words);
    free(p->buf);
}

/* Calls the user's callback; returns its int (0 for a void callback). */
static int deliver(Fake *f, RKLLMResult *r, void *userdata, LLMCallState st) {
#if RKLLM_ABI == 120
    f->cb(r, userdata, st);
    return 0;
#elif RKLLM_ABI == 12
    return f->cb(r, userdata, st);
#else
    return f->cb.result_callback(r, userdata ? userdata : f->cb.result_userdata, st);
#endif
}

/* ---- prefill and prompt cache ------------------------------------------------------------ */

#define PC_MAGIC "RKLLM-FAKE-PROMPT-CACHE 1"

/* The words of `s` (a fresh copy in *buf that *words points into); returns how many. */
static int split_words(const char *s, char **buf, char ***words) {
    *buf = strdup(s ? s : "");
    *words = calloc(strlen(*buf) / 2 + 2, sizeof(char *));
    int n = 0;
    char *save = NULL;
    for (char *w = strtok_r(*buf, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save))
        (*words)[n++] = w;
    return n;
}

/* How many leading words `a` and `b` share. */
static int common_words(const char *a, const char *b) {
    char *ba, *bb, **wa, **wb;
    int na = split_words(a, &ba, &wa), nb = split_words(b, &bb, &wb), k = 0;
    while (k < na && k < nb && strcmp(wa[k], wb[k]) == 0) k++;
    free(wa), free(ba), free(wb), free(bb);
    return k;
}

/* The system prompt as the runtime sees it: the template's, then the tools. */
static char *system_text(const Fake *f) {
    const char *sys = f->tpl_system ? f->tpl_system : "", *tools = f->tools ? f->tools : "";
    char *out = malloc(strlen(sys) + strlen(tools) + 2);
    sprintf(out, "%s%s%s", sys, *tools ? " " : "", tools);
    return out;
}

/* Everything one run prefills: system prompt, template prefix, the input, template postfix. */
static char *rendered_prompt(const Fake *f, const char *sys, const char *input) {
    const char *pre = f->tpl_prefix ? f->tpl_prefix : "", *post = f->tpl_postfix ? f->tpl_postfix : "";
    char *out = malloc(strlen(sys) + strlen(pre) + strlen(input) + strlen(post) + 4);
    sprintf(out, "%s %s %s %s", sys, pre, input, post);
    return out;
}

static long model_size(const char *path) {
    struct stat sb;
    return (path && stat(path, &sb) == 0) ? (long)sb.st_size : -1;
}

static void pc_error(const char *fmt, const char *arg) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg ? arg : "(null)");
    copy_str(last_pc_error, sizeof last_pc_error, msg);
    printf("E rkllm: %s\n", msg);
    fflush(stdout);
}

/* Saves the words of `text` as a prompt cache of this model and runtime at `path`. */
static int save_prompt_cache(const Fake *f, const char *path, const char *text) {
    FILE *out = fopen(path, "wb");
    if (!out) {
        pc_error("failed to save the prompt cache to %s", path);
        atomic_fetch_add(&stats[S_PC_SAVE_FAILED], 1);
        return -1;
    }
    char *buf, **words;
    int n = split_words(text, &buf, &words);
    fprintf(out, "%s\nruntime %s\nmodel %s\nmodel_size %ld\ntokens %d\n\n", PC_MAGIC, FAKE_RKLLM_VERSION,
            f->model_path, model_size(f->model_path), n);
    for (int i = 0; i < n; i++) fprintf(out, "%s%s", i ? " " : "", words[i]);
    free(words), free(buf);
    int bad = ferror(out);
    bad |= fclose(out);
    if (bad) {
        pc_error("failed to write the prompt cache %s", path);
        atomic_fetch_add(&stats[S_PC_SAVE_FAILED], 1);
        return -1;
    }
    atomic_fetch_add(&stats[S_PC_SAVES], 1);
    return 0;
}

/* Sleeps `us` microseconds in slices, returning early once the run is aborted. */
static void prefill_sleep(Fake *f, long us) {
    while (us > 0 && !atomic_load(&f->abort_flag)) {
        long step = us > 20000 ? 20000 : us;
        struct timespec ts = {0, step * 1000L};
        nanosleep(&ts, NULL);
        us -= step;
    }
}

/* ---- the run ------------------------------------------------------------------------------ */

typedef struct {
    char *prompt;
    char role[32];
    int save_cache;        /* prompt_cache_params->save_prompt_cache */
    char cache_path[4096]; /* where to save it */
    int keep_history;
    int run_limit;
    int enable_thinking;
    int mode; /* RKLLMInferMode */
    void *userdata;
    pthread_t caller;
} RunArgs;

/* Whether a [[think]] run thinks, as Qwen3 on the vendor runtime: enable_thinking under the
 * model's own template; under rkllm_set_chat_template's (which makes the runtime ignore the
 * switch) unless the postfix closes an empty block itself, as Qwen3's template does for "off". */
static int thinks(const Fake *f, const RunArgs *a) {
    if (!f->tpl_postfix) return a->enable_thinking;
    const char *closed = "</think>\n\n";
    size_t n = strlen(f->tpl_postfix), k = strlen(closed);
    return !(n >= k && strcmp(f->tpl_postfix + n - k, closed) == 0);
}

/* [[think]] with thinking on: the thought block, then the reply ([[say]]'s, or the words). */
static void think_first(Plan *p) {
    size_t cap = strlen(p->think) + 32 + (p->say ? strlen(p->say) : 0);
    for (int i = 0; i < p->n_words; i++) cap += strlen(p->words[i]) + 1;
    char *out = malloc(cap);
    int o = snprintf(out, cap, "<think>\n%s\n</think>\n\n", p->think);
    if (p->say) {
        snprintf(out + o, cap - (size_t)o, "%s", p->say);
    } else {
        for (int i = 0; i < p->n_words; i++) o += snprintf(out + o, cap - (size_t)o, "%s%s", i ? " " : "", p->words[i]);
    }
    free(p->say);
    p->say = out;
}

/* ---- the vector modes: hidden states and logits derived from the words ---------------------
 *
 * RKLLM_INFER_GET_LAST_HIDDEN_LAYER: one NORMAL callback whose last_hidden_layer holds a row of
 * embd_size floats (FAKE_RKLLM_EMBD_SIZE, default 16) per word of the rendered prompt (system
 * prompt, template prefix, input, postfix; directives removed, words upper-cased, "EMPTY" when
 * there is none): row i, column j = unit(fnv1a(word_i), j). FAKE_RKLLM_HIDDEN_LAST_ONLY=1 gives
 * the last row alone (num_tokens 1). RKLLM_INFER_GET_LOGITS: one NORMAL callback whose logits
 * hold a row of vocab_size floats (FAKE_RKLLM_VOCAB_SIZE, default 64) per word: row i, column k =
 * 4 * unit(chain_i, k), chain_i the fnv1a hash of words 0..i each followed by a space. Then
 * FINISH with prefill_tokens = words. unit(h, j): x = h ^ (j+1)*0x9E3779B9, three xorshift32
 * steps (13, 17, 5), then (x % 2001 - 1000) / 1000. tests/fake_rkllm/vectors.py computes the same.
 * [[delay_ms=N]] sleeps before the result (abort ends the run), [[fail_at=1]] is an ERROR,
 * [[crash_at=1]] a SIGSEGV, [[hang_at=1]] a run that ignores abort. */

static uint32_t fnv1a(uint32_t h, const char *s) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static float unit(uint32_t h, int j) {
    uint32_t x = h ^ ((uint32_t)(j + 1) * 0x9E3779B9u);
    for (int k = 0; k < 3; k++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
    }
    return (float)((int)(x % 2001u) - 1000) / 1000.0f;
}

static int do_vectors(Fake *f, RunArgs *a) {
    Plan p = {.chunk = 3};
    char *sys = system_text(f), *full = rendered_prompt(f, sys, a->prompt);
    plan_parse(&p, full);
    free(full), free(sys);
    int n = p.n_words, rc = 0;
    atomic_store(&stats[S_CALLBACK_TID_MATCH], pthread_equal(a->caller, pthread_self()) ? 1 : 0);
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    for (int waited = 0; waited < p.delay_ms && !atomic_load(&f->abort_flag); waited += 10) sleep_ms(10);
    if (p.crash_at == 1) {
        printf("E rkllm: fake crash in a vector run\n");
        fflush(stdout);
        raise(SIGSEGV);
    }
    if (p.hang_at == 1)
        for (;;) sleep_ms(1000);
    if (p.fail_at == 1) {
        printf("E rkllm: fake failure in a vector run\n");
        fflush(stdout);
        deliver(f, &r, a->userdata, RKLLM_RUN_ERROR);
        plan_free(&p);
        return -1;
    }
    if (atomic_load(&f->abort_flag)) goto finish;
    if (a->mode == RKLLM_INFER_GET_LAST_HIDDEN_LAYER) {
        int d = f->env_embd > 0 ? f->env_embd : 16, first = f->env_last_only ? n - 1 : 0;
        float *buf = malloc(sizeof(float) * (size_t)d * (size_t)(n - first));
        for (int i = first; i < n; i++)
            for (int j = 0; j < d; j++) buf[(size_t)(i - first) * d + j] = unit(fnv1a(2166136261u, p.words[i]), j);
        r.last_hidden_layer.hidden_states = buf;
        r.last_hidden_layer.embd_size = d;
        r.last_hidden_layer.num_tokens = n - first;
        r.token_id = -1;
        deliver(f, &r, a->userdata, RKLLM_RUN_NORMAL);
        free(buf); /* the runtime frees it by the next callback: a caller must copy */
    } else {
        int v = f->env_vocab > 0 ? f->env_vocab : 64;
        float *buf = malloc(sizeof(float) * (size_t)v * (size_t)n);
        uint32_t h = 2166136261u;
        for (int i = 0; i < n; i++) {
            h = fnv1a(fnv1a(h, p.words[i]), " ");
            for (int k = 0; k < v; k++) buf[(size_t)i * v + k] = 4.0f * unit(h, k);
        }
        r.logits.logits = buf;
        r.logits.vocab_size = v;
        r.logits.num_tokens = n;
        r.token_id = -1;
        deliver(f, &r, a->userdata, RKLLM_RUN_NORMAL);
        free(buf);
    }
finish:
    memset(&r, 0, sizeof r);
#if RKLLM_ABI != 120
    r.perf.prefill_tokens = n;
    r.perf.prefill_time_ms = 1.5f * (float)n;
    r.perf.memory_usage_mb = 123.5f;
#endif
    r.token_id = -1;
    deliver(f, &r, a->userdata, RKLLM_RUN_FINISH);
    f->kv_size = f->system_tokens; /* a vector run keeps no history */
    plan_free(&p);
    return rc;
}


/* A [[say]] or script text with "@IMAGES@" replaced by the words of this run's images (the
 * "images" string, trimmed), so a canned answer (a JSON object, say) tells what the double saw. */
static char *with_images(char *say) {
    static const char mark[] = "@IMAGES@";
    char *at = strstr(say, mark);
    if (!at) return say;
    size_t n = strlen(last_images);
    while (n && last_images[n - 1] == ' ') n--;
    char *out = malloc(strlen(say) + n + 1);
    size_t head = (size_t)(at - say);
    memcpy(out, say, head);
    memcpy(out + head, last_images, n);
    strcpy(out + head + n, at + sizeof mark - 1);
    free(say);
    return with_images(out);
}

static int do_run(Fake *f, RunArgs *a) {
    Plan p = {f->env_delay_ms, f->env_len, f->env_fail_at, f->env_split, 0, 0, 0, f->env_prefill_us,
              NULL, NULL, 3, NULL, NULL, 0};
    plan_parse(&p, a->prompt);
    if (p.say && strcmp(a->role, "tool") == 0) {
        free(p.say);
        p.say = NULL;
    }
    if (!p.say) p.say = script_reply(a->role, a->prompt);
    if (p.think && thinks(f, a)) think_first(&p);
    if (p.say) p.say = with_images(p.say);
    if (p.chunk < 1) p.chunk = 1;
    if (p.chunk > 200) p.chunk = 200;
    int say_len = p.say ? (int)strlen(p.say) : 0;
    int total = p.say ? (say_len + p.chunk - 1) / p.chunk : p.len > 0 ? p.len : p.n_words;
    int limit = a->run_limit > 0 ? a->run_limit : f->param.max_new_tokens;
    int n = (limit > 0 && limit < total) ? limit : total;
    atomic_store(&stats[S_LAST_LIMIT], limit);
    atomic_store(&stats[S_LAST_KEEP_HISTORY], a->keep_history);
    atomic_store(&stats[S_CALLBACK_TID_MATCH], pthread_equal(a->caller, pthread_self()) ? 1 : 0);
    int prefill = count_words(a->prompt); /* the input's own tokens: what a kept history grows by */
    double t0 = now_ms();
    (void)t0; /* only ABI >= 12 reports timings */
    char *sys = system_text(f), *full = rendered_prompt(f, sys, a->prompt);
    int prompt_total = count_words(full), reused = 0, pc_used = 0;
    if (f->sys_cached || (a->keep_history && f->turns > 0)) reused = count_words(sys);
    if (f->pc_words) pc_used = common_words(f->pc_words, full);
    if (pc_used > reused) reused = pc_used;
    int computed = prompt_total - reused;
    atomic_store(&stats[S_PREFILL_COMPUTED], computed);
    atomic_store(&stats[S_PREFILL_REUSED], reused);
    atomic_store(&stats[S_PC_USED], pc_used);
    prefill_sleep(f, (long)computed * p.prefill_us);
    t0 = now_ms(); /* generate time starts after the prefill */
    if (!atomic_load(&f->abort_flag)) {
        f->sys_cached = 1;
        if (a->save_cache) save_prompt_cache(f, a->cache_path, full);
    }
    free(full), free(sys);
    int emitted = 0, rc = 0, paused = 0;
    char text[256];
    RKLLMResult r;
    for (int i = 0; i < n; i++) {
        sleep_ms(p.delay_ms);
        if (atomic_load(&f->abort_flag)) break;
        memset(&r, 0, sizeof r);
        if (p.crash_at > 0 && i + 1 == p.crash_at) {
            printf("E rkllm: fake crash at token %d\n", i + 1);
            fflush(stdout);
            raise(SIGSEGV);
        }
        if (p.sigill_at > 0 && i + 1 == p.sigill_at) {
            raise(SIGILL); /* what an instruction this CPU lacks does */
        }
        if (p.hang_at > 0 && i + 1 == p.hang_at) {
            for (;;) sleep_ms(1000); /* a wedged runtime: abort has no effect */
        }
        if (p.fail_at > 0 && i + 1 == p.fail_at) {
            printf("E rkllm: fake failure at token %d\n", i + 1);
            fflush(stdout);
            deliver(f, &r, a->userdata, RKLLM_RUN_ERROR);
            rc = -1;
            goto out;
        }
        LLMCallState st = RKLLM_RUN_NORMAL;
        if (p.say) {
            int off = i * p.chunk;
            snprintf(text, sizeof text, "%.*s", p.chunk, p.say + off);
        } else if (p.split && i == 1) {
            snprintf(text, sizeof text, " \xE2\x82");
            st = RKLLM_RUN_WAITING;
        } else if (p.split && i == 2) {
            snprintf(text, sizeof text, "\xAC");
        } else {
            snprintf(text, sizeof text, "%s%s", i ? " " : "", p.words[i % p.n_words]);
        }
        r.text = text;
        r.token_id = 100 + i;
        int cb = deliver(f, &r, a->userdata, st);
        emitted++;
        atomic_store(&stats[S_LAST_RC], cb);
        if (cb != 0) atomic_fetch_add(&stats[S_NONZERO_RC], 1);
        /* 1 pauses; 2 (ABI 13) only releases buffers; anything else is undefined, and a real
         * runtime may well read it as a pause, so the double does too. */
        if (cb != 0 && !(RKLLM_FAMILY_F && cb == 2)) {
            atomic_fetch_add(&stats[S_PAUSES], 1);
            paused = 1;
            break;
        }
    }
    if (!paused) {
        memset(&r, 0, sizeof r);
#if RKLLM_ABI != 120
        r.perf.prefill_tokens = computed;
        r.perf.prefill_time_ms = 1.5f * (float)computed + (float)computed * (float)p.prefill_us / 1000.0f;
        r.perf.generate_tokens = emitted;
        r.perf.generate_time_ms = (float)(now_ms() - t0);
        r.perf.memory_usage_mb = 123.5f;
#endif
        r.token_id = -1;
        deliver(f, &r, a->userdata, RKLLM_RUN_FINISH);
    }
    if (a->keep_history) {
        f->kv_size += prefill + emitted;
        f->turns++;
    } else {
        f->kv_size = f->system_tokens;
    }
    if (env_int("RKLLM_LOG_LEVEL", 0) >= 1) {
        printf("I rkllm: fake perf: prefill %d tokens (%d reused), generate %d tokens\n", computed, reused,
               emitted);
        fflush(stdout);
    }
out:
    plan_free(&p);
    return rc;
}

/* ---- what the caller handed over: struct size, stray bytes, JSON tool results -------------- */

/* A caller binds a layout of its own: the double can only read RKLLMInput as this build declares
 * it. So it reports the size it reads (input_size) and, for a prompt input, the nonzero bytes of
 * the union after the prompt pointer (input_stray_bytes): a caller that zeroes a struct of the
 * same size leaves 0 there, one whose struct is shorter leaves whatever follows it in memory. */
static void note_input(const RKLLMInput *in) {
    atomic_store(&stats[S_INPUT_SIZE], (int)sizeof(RKLLMInput));
    if (in->input_type != RKLLM_INPUT_PROMPT) return;
    const unsigned char *b = (const unsigned char *)in;
    int stray = 0;
    for (size_t i = offsetof(RKLLMInput, prompt_input) + sizeof(in->prompt_input); i < sizeof(RKLLMInput); i++)
        stray += b[i] != 0;
    atomic_store(&stats[S_INPUT_STRAY], stray);
}

/* The image part of a multimodal input, whichever layout it came in. */
typedef struct {
    const char *prompt;
    const float *embed;
    size_t n_tokens, n_image, width, height;
    const char *start, *end, *content;
} ImageView;

/* The multimodal input: which counts arrived where; the image view for image_words(). */
static ImageView note_multimodal(const Fake *f, const RKLLMInput *in) {
    ImageView v;
    memset(&v, 0, sizeof v);
#if RKLLM_FAMILY_F
    const RKLLMMultiModalInput *m = &in->multimodal_input;
    (void)f;
    v = (ImageView){m->prompt, m->image.image_embed, m->image.n_image_tokens, m->image.n_image,
                    m->image.image_width, m->image.image_height, m->image.image_start,
                    m->image.image_end, m->image.image_content};
    atomic_store(&stats[S_MM_N_VIDEO], (int)m->video.n_video);
#if RKLLM_ABI == 131
    atomic_store(&stats[S_MM_N_AUDIO], (int)m->audio.n_audio);
    atomic_store(&stats[S_MM_N_AUDIO_TOKENS], (int)m->audio.n_audio_tokens);
    copy_str(last_audio_start, sizeof last_audio_start, m->audio.audio_start);
    copy_str(last_audio_content, sizeof last_audio_content, m->audio.audio_content);
#endif
#elif RKLLM_ABI == 12
    const RKLLMMultiModalInput *m = &in->multimodal_input;
    v = (ImageView){m->prompt, m->image_embed, m->n_image_tokens, m->n_image, m->image_width,
                    m->image_height, f->param.img_start, f->param.img_end, f->param.img_content};
#else
    const RKLLMMultiModelInput *m = &in->multimodal_input;
    v = (ImageView){m->prompt, m->image_embed, m->n_image_tokens, m->image_embed ? 1 : 0, 0, 0,
                    f->param.img_start, f->param.img_end, f->param.img_content};
#endif
    atomic_store(&stats[S_MM_N_IMAGE], (int)v.n_image);
    atomic_store(&stats[S_MM_N_IMAGE_TOKENS], (int)v.n_tokens);
    atomic_store(&stats[S_MM_IMAGE_WIDTH], (int)v.width);
    atomic_store(&stats[S_MM_IMAGE_HEIGHT], (int)v.height);
    copy_str(last_image_start, sizeof last_image_start, v.start);
    copy_str(last_image_end, sizeof last_image_end, v.end);
    copy_str(last_image_content, sizeof last_image_content, v.content);
    return v;
}

static int image_refused(const char *why) {
    atomic_fetch_add(&stats[S_MM_REFUSED], 1);
    printf("E rkllm: fake: %s\n", why);
    fflush(stdout);
    return -1;
}

/* x * 1000 rounded half away from zero (no libm). */
static long milli(double x) { return (long)(x < 0 ? x * 1000.0 - 0.5 : x * 1000.0 + 0.5); }

/* The prompt with each "<image>" replaced by what the double saw of that image (see the top). */
static int image_words(const ImageView *v, int embed_dim, char **out) {
    static const char tag[] = "<image>";
    size_t placeholders = 0;
    for (const char *p = strstr(v->prompt, tag); p; p = strstr(p + 1, tag)) placeholders++;
    atomic_store(&stats[S_MM_PLACEHOLDERS], (int)placeholders);
    if (!v->embed) return image_refused("image_embed is NULL");
    if (v->n_tokens == 0) return image_refused("n_image_tokens is 0");
    if (embed_dim <= 0) return image_refused("embedding width unknown: [[embed_dim=N]] or FAKE_RKLLM_EMBED_DIM");
    if (placeholders != v->n_image) return image_refused("the prompt's <image> count is not n_image");
    size_t per = v->n_tokens * (size_t)embed_dim;
    size_t cap = strlen(v->prompt) + v->n_image * 96 + 1;
    char *buf = malloc(cap), *w = buf;
    char seen[4096] = "";
    const char *p = v->prompt;
    for (size_t k = 0; k < v->n_image; k++) {
        const char *at = strstr(p, tag);
        memcpy(w, p, (size_t)(at - p));
        w += at - p;
        const float *e = v->embed + k * per;
        double sum = 0;
        for (size_t i = 0; i < per; i++) sum += e[i];
        char word[96];
        snprintf(word, sizeof word, " IMAGE%zu:%zuX%d:M%ld:F%ld:L%ld ", k + 1, v->n_tokens, embed_dim,
                 milli(sum / (double)per), milli(e[0]), milli(e[(v->n_tokens - 1) * (size_t)embed_dim]));
        w += sprintf(w, "%s", word);
        strncat(seen, word + 1, sizeof seen - strlen(seen) - 1);
        p = at + sizeof tag - 1;
    }
    strcpy(w, p);
    copy_str(last_images, sizeof last_images, seen);
    *out = buf;
    return 0;
}

static int embed_dim_of(const char *prompt) {
    const char *d = strstr(prompt, "[[embed_dim=");
    if (d) return atoi(d + strlen("[[embed_dim="));
    return env_int("FAKE_RKLLM_EMBED_DIM", 0);
}

/* A small JSON checker (RFC 8259 grammar, no depth limit beyond 64): the 1.3.1 runtime refuses a
 * role "tool" input that is not JSON text (rkllm_run returns -1), and the double does too. */
static const char *json_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}
static const char *json_value(const char *p, int depth);
static const char *json_string(const char *p) {
    if (*p++ != '"') return NULL;
    while (*p && *p != '"') {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!isxdigit((unsigned char)p[i])) return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
                return NULL;
            }
        }
        p++;
    }
    return *p == '"' ? p + 1 : NULL;
}
static const char *json_number(const char *p) {
    if (*p == '-') p++;
    if (*p == '0') p++;
    else if (isdigit((unsigned char)*p)) while (isdigit((unsigned char)*p)) p++;
    else return NULL;
    if (*p == '.') {
        if (!isdigit((unsigned char)*++p)) return NULL;
        while (isdigit((unsigned char)*p)) p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!isdigit((unsigned char)*p)) return NULL;
        while (isdigit((unsigned char)*p)) p++;
    }
    return p;
}
static const char *json_items(const char *p, int depth, char close, int keyed) {
    p = json_ws(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
        if (keyed) {
            if (!(p = json_string(json_ws(p)))) return NULL;
            p = json_ws(p);
            if (*p++ != ':') return NULL;
        }
        if (!(p = json_value(p, depth + 1))) return NULL;
        p = json_ws(p);
        if (*p == close) return p + 1;
        if (*p++ != ',') return NULL;
    }
}
static const char *json_value(const char *p, int depth) {
    p = json_ws(p);
    if (depth > 64) return NULL;
    if (*p == '{') return json_items(p, depth, '}', 1);
    if (*p == '[') return json_items(p, depth, ']', 0);
    if (*p == '"') return json_string(p);
    if (strncmp(p, "true", 4) == 0) return p + 4;
    if (strncmp(p, "false", 5) == 0) return p + 5;
    if (strncmp(p, "null", 4) == 0) return p + 4;
    return json_number(p);
}
__attribute__((unused)) static int is_json(const char *text) {
    const char *end = text ? json_value(text, 0) : NULL;
    return end && *json_ws(end) == '\0';
}

static int prepare(Fake *f, RKLLMInput *in, RKLLMInferParam *ip, void *userdata, RunArgs *a) {
    if (!f || !in || !ip) return -1;
    note_input(in);
    const char *text = in->input_type == RKLLM_INPUT_PROMPT ? in->prompt_input : NULL;
    ImageView v;
    memset(&v, 0, sizeof v);
    if (in->input_type == RKLLM_INPUT_MULTIMODAL) {
        v = note_multimodal(f, in);
        text = v.prompt;
    }
    if (!text) return -1;
    if (ip->mode != RKLLM_INFER_GENERATE && ip->mode != RKLLM_INFER_GET_LAST_HIDDEN_LAYER &&
        ip->mode != RKLLM_INFER_GET_LOGITS)
        return -1;
    memset(a, 0, sizeof *a);
    a->mode = ip->mode;
#if RKLLM_ABI != 120
    if (in->role && strcmp(in->role, "user") != 0 && strcmp(in->role, "tool") != 0) return -1;
    snprintf(a->role, sizeof a->role, "%s", in->role ? in->role : "");
    a->enable_thinking = in->enable_thinking ? 1 : 0;
    atomic_store(&stats[S_ENABLE_THINKING], a->enable_thinking);
#else
    atomic_store(&stats[S_ENABLE_THINKING], -1); /* 1.2.0 has no such field */
#endif
#if RKLLM_ABI == 131
    if (in->role && strcmp(in->role, "tool") == 0 && !is_json(text)) {
        atomic_fetch_add(&stats[S_TOOL_NOT_JSON], 1);
        printf("E rkllm: the content of a tool message must be a JSON string\n");
        fflush(stdout);
        return -1;
    }
#endif
    a->keep_history = ip->keep_history;
    if (ip->prompt_cache_params && ip->prompt_cache_params->save_prompt_cache) {
        const char *path = ip->prompt_cache_params->prompt_cache_path;
        a->save_cache = 1;
        snprintf(a->cache_path, sizeof a->cache_path, "%s", path ? path : "./prompt_cache.bin");
    }
#if RKLLM_FAMILY_F
    a->run_limit = ip->max_new_tokens;
    const RKLLMSamplingParam *sp = ip->sampling_params;
    if (sp) {
        if (sp->top_p <= 0.0f || sp->top_p > 1.0f || sp->temperature < 0.0f || sp->top_k < 0) return -1;
        atomic_store(&stats[S_LAST_TOP_K], sp->top_k);
        atomic_store(&stats[S_LAST_TEMP_MILLI], (int)(sp->temperature * 1000.0f + 0.5f));
    } else {
        atomic_store(&stats[S_LAST_TOP_K], f->param.top_k);
        atomic_store(&stats[S_LAST_TEMP_MILLI], (int)(f->param.temperature * 1000.0f + 0.5f));
    }
#else
    atomic_store(&stats[S_LAST_TOP_K], f->param.top_k);
    atomic_store(&stats[S_LAST_TEMP_MILLI], (int)(f->param.temperature * 1000.0f + 0.5f));
#endif
    char *expanded = NULL; /* the prompt with the images' words, for a run with images */
    if (v.n_image == 0) last_images[0] = '\0';
    if (v.n_image > 0 && image_words(&v, embed_dim_of(text), &expanded) != 0) return -1;
    a->prompt = expanded ? expanded : strdup(text);
    a->userdata = userdata;
    a->caller = pthread_self();
    copy_str(last_role, sizeof last_role, a->role);
    copy_str(last_prompt, sizeof last_prompt, text);
    return 0;
}

int rkllm_run(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata) {
    Fake *f = as_fake(handle);
    RunArgs a;
    if (!f || prepare(f, in, ip, userdata, &a) != 0) return -1;
    int idle = 0;
    if (!atomic_compare_exchange_strong(&f->running, &idle, 1)) {
        free(a.prompt);
        return -1; /* one run per instance at a time */
    }
    atomic_fetch_add(&stats[S_RUN], 1);
    atomic_store(&f->abort_flag, 0);
    int rc = a.mode == RKLLM_INFER_GENERATE ? do_run(f, &a) : do_vectors(f, &a);
    free(a.prompt);
    atomic_store(&f->running, 0);
    return rc;
}

typedef struct {
    Fake *f;
    RunArgs a;
} AsyncJob;

static void *async_main(void *arg) {
    AsyncJob *j = arg;
    do_run(j->f, &j->a);
    free(j->a.prompt);
    atomic_store(&j->f->running, 0);
    free(j);
    return NULL;
}

int rkllm_run_async(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    if (!f->param.is_async) return rkllm_run(handle, in, ip, userdata);
    AsyncJob *j = calloc(1, sizeof *j);
    if (prepare(f, in, ip, userdata, &j->a) != 0) {
        free(j);
        return -1;
    }
    int idle = 0;
    if (!atomic_compare_exchange_strong(&f->running, &idle, 1)) {
        free(j->a.prompt);
        free(j);
        return -1;
    }
    if (f->async_active) pthread_join(f->async_thread, NULL);
    atomic_fetch_add(&stats[S_RUN], 1);
    atomic_store(&f->abort_flag, 0);
    j->f = f;
    f->async_active = 1;
    pthread_create(&f->async_thread, NULL, async_main, j);
    return 0;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 40;
    p.n_keep = -1;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = true;
#if !RKLLM_FAMILY_F
    p.img_start = p.img_end = p.img_content = "";
#endif
    p.extend_param.embed_flash = 1;
    p.extend_param.enabled_cpus_num = 4;
    p.extend_param.enabled_cpus_mask = 0xF0;
#if RKLLM_ABI != 120
    p.extend_param.n_batch = 1;
#endif
    return p;
}

int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLM_INIT_CALLBACK_T callback) {
    atomic_fetch_add(&stats[S_INIT], 1);
    printf(version_format, FAKE_RKLLM_VERSION, "0.0.0-fake", "FAKE");
    printf("\n");
    fflush(stdout);
    if (!handle || !param || !callback) return -1;
#if RKLLM_FAMILY_F
    if (!callback->result_callback) return -1;
#endif
    const char *fail = getenv("FAKE_RKLLM_FAIL_INIT");
    if ((fail && strcmp(fail, "1") == 0) || (param->model_path && strstr(param->model_path, "fail-init"))) {
        printf("E rkllm: fake init failure requested\n");
        fflush(stdout);
        return -1;
    }
    struct stat sb;
    if (!param->model_path || stat(param->model_path, &sb) != 0) {
        printf("E rkllm: failed to open model file %s\n", param->model_path ? param->model_path : "(null)");
        fflush(stdout);
        return -1;
    }
    const RKLLMExtendParam *x = &param->extend_param;
    atomic_store(&stats[S_LAST_CPUS_MASK], (int)x->enabled_cpus_mask);
    atomic_store(&stats[S_LAST_CPUS_NUM], x->enabled_cpus_num);
#if RKLLM_ABI != 120
    atomic_store(&stats[S_LAST_N_BATCH], x->n_batch);
    if (x->n_batch < 1 || x->n_batch > 8) return -1; /* a zeroed struct gives 0: refuse like a real misuse */
#endif
    if (param->max_context_len <= 0 || x->enabled_cpus_num < 1 || x->enabled_cpus_mask == 0) return -1;
    Fake *f = calloc(1, sizeof *f);
    f->magic = FAKE_MAGIC;
    f->model_path = strdup(param->model_path);
    f->param = *param;
    f->param.model_path = f->model_path;
#if RKLLM_FAMILY_F
    f->cb = *callback;
#else
    f->cb = callback;
#endif
    f->env_delay_ms = env_int("FAKE_RKLLM_DELAY_MS", 0);
    f->env_len = env_int("FAKE_RKLLM_LEN", 0);
    f->env_fail_at = env_int("FAKE_RKLLM_FAIL_AT", 0);
    f->env_split = env_int("FAKE_RKLLM_SPLIT_UTF8", 0);
    f->env_prefill_us = env_int("FAKE_RKLLM_PREFILL_US", 0);
    f->env_embd = env_int("FAKE_RKLLM_EMBD_SIZE", 16);
    f->env_vocab = env_int("FAKE_RKLLM_VOCAB_SIZE", 64);
    f->env_last_only = env_int("FAKE_RKLLM_HIDDEN_LAST_ONLY", 0);
    printf("I rkllm: Enabled cpus num: %d\n", x->enabled_cpus_num);
    fflush(stdout);
    atomic_fetch_add(&stats[S_LIVE], 1);
    *handle = f;
    return 0;
}

int rkllm_destroy(LLMHandle handle) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    atomic_store(&f->abort_flag, 1);
    if (f->async_active) pthread_join(f->async_thread, NULL);
    f->magic = 0;
    free(f->model_path);
    free(f->tpl_system), free(f->tpl_prefix), free(f->tpl_postfix), free(f->tools), free(f->pc_words);
    free(f);
    atomic_fetch_add(&stats[S_DESTROY], 1);
    atomic_fetch_sub(&stats[S_LIVE], 1);
    return 0;
}

int rkllm_abort(LLMHandle handle) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    atomic_fetch_add(&stats[S_ABORT], 1);
    atomic_store(&f->abort_flag, 1); /* seen before the next token */
    return 0;
}

int rkllm_is_running(LLMHandle handle) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    int running = atomic_load(&f->running);
#if RKLLM_FAMILY_F
    return running ? 1 : 0; /* 1.3.0 header: 1 while a task runs */
#else
    return running ? 0 : 1; /* older headers: 0 while a task runs */
#endif
}

/* ---- cache, templates, adapters ------------------------------------------------------------ */

#if RKLLM_ABI == 120
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt) {
    Fake *f = as_fake(handle);
    if (!f || atomic_load(&f->running)) return -1;
    atomic_fetch_add(&stats[S_CLEAR_KV], 1);
    f->kv_size = keep_system_prompt ? f->system_tokens : 0;
    f->sys_cached = f->sys_cached && keep_system_prompt;
    f->turns = 0;
    return 0;
}
#else
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    if ((start_pos == NULL) != (end_pos == NULL)) return -1;
    atomic_fetch_add(&stats[S_CLEAR_KV], 1);
    if (start_pos) {
        if (start_pos[0] < 0 || start_pos[0] >= end_pos[0] || end_pos[0] > f->kv_size) return -1;
        f->kv_size -= end_pos[0] - start_pos[0];
        return 0;
    }
    if (atomic_load(&f->running)) return -1;
    f->kv_size = keep_system_prompt ? f->system_tokens : 0;
    f->sys_cached = f->sys_cached && keep_system_prompt;
    f->turns = 0;
    return 0;
}

int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes) {
    Fake *f = as_fake(handle);
    if (!f || !cache_sizes) return -1;
    for (int b = 0; b < (f->param.extend_param.n_batch ? f->param.extend_param.n_batch : 1); b++)
        cache_sizes[b] = f->kv_size;
    return 0;
}

#ifndef FAKE_RKLLM_OMIT_rkllm_set_function_tools
int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
                             const char *tool_response_str) {
    Fake *f = as_fake(handle);
    if (!f || !system_prompt || !tools || !tool_response_str) return -1;
    const char *t = tools;
    while (isspace((unsigned char)*t)) t++;
    if (*t != '[') return -1; /* the tools must be a JSON array */
    atomic_fetch_add(&stats[S_TOOLS], 1);
    copy_str(last_tools, sizeof last_tools, tools);
    const char *now = strcmp(t, "[]") == 0 ? "" : tools;
    if (!f->tools || strcmp(f->tools, now) != 0) f->sys_cached = 0; /* the system prompt changed */
    free(f->tools);
    f->tools = strdup(now);
    return 0;
}
#endif

#ifndef FAKE_RKLLM_OMIT_rkllm_set_cross_attn_params
int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *p) {
    Fake *f = as_fake(handle);
    if (!f || !p || !p->encoder_k_cache || !p->encoder_v_cache || p->num_tokens <= 0) return -1;
    atomic_fetch_add(&stats[S_CROSS_ATTN], 1);
    return 0;
}
#endif
#endif

int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt, const char *prompt_prefix,
                            const char *prompt_postfix) {
    Fake *f = as_fake(handle);
    if (!f || !system_prompt || !prompt_prefix || !prompt_postfix) return -1;
    atomic_fetch_add(&stats[S_CHAT_TEMPLATE], 1);
    if (!f->tpl_system || strcmp(f->tpl_system, system_prompt) != 0) f->sys_cached = 0;
    free(f->tpl_system), free(f->tpl_prefix), free(f->tpl_postfix);
    f->tpl_system = strdup(system_prompt);
    f->tpl_prefix = strdup(prompt_prefix);
    f->tpl_postfix = strdup(prompt_postfix);
    f->system_tokens = count_words(system_prompt);
    copy_str(last_system, sizeof last_system, system_prompt);
    return 0;
}

__attribute__((unused)) static int file_exists(const char *path) {
    struct stat sb;
    return path && stat(path, &sb) == 0;
}

#ifndef FAKE_RKLLM_OMIT_rkllm_load_lora
int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *a) {
    Fake *f = as_fake(handle);
    if (!f || !a || !a->lora_adapter_name || !file_exists(a->lora_adapter_path)) return -1;
    f->loras++;
    atomic_fetch_add(&stats[S_LORA], 1);
    return 0;
}
#endif

/* Reads one "key value" header line into `val` (cap bytes); 0 when the line is not `key`. */
__attribute__((unused)) static int header_line(FILE *in, const char *key, char *val, size_t cap) {
    char line[4200];
    if (!fgets(line, sizeof line, in)) return 0;
    line[strcspn(line, "\n")] = '\0';
    size_t k = strlen(key);
    if (strncmp(line, key, k) != 0 || line[k] != ' ') return 0;
    snprintf(val, cap, "%s", line + k + 1);
    return 1;
}

#ifndef FAKE_RKLLM_OMIT_rkllm_load_prompt_cache
int rkllm_load_prompt_cache(LLMHandle handle, const char *path) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    if (f->pc_words) {
        pc_error("a prompt cache is loaded already; release it before loading %s", path);
        atomic_fetch_add(&stats[S_PC_LOAD_FAILED], 1);
        return -1;
    }
    FILE *in = path ? fopen(path, "rb") : NULL;
    if (!in) {
        pc_error("failed to open the prompt cache %s", path);
        atomic_fetch_add(&stats[S_PC_LOAD_FAILED], 1);
        return -1;
    }
    char magic[64] = "", version[64], model[4096], size[32], tokens[32];
    int ok = fgets(magic, sizeof magic, in) && strncmp(magic, PC_MAGIC "\n", sizeof PC_MAGIC) == 0 &&
             header_line(in, "runtime", version, sizeof version) &&
             header_line(in, "model", model, sizeof model) && header_line(in, "model_size", size, sizeof size) &&
             header_line(in, "tokens", tokens, sizeof tokens) && fgetc(in) == '\n';
    const char *why = !ok ? "%s is not a prompt cache file"
                      : strcmp(version, FAKE_RKLLM_VERSION) != 0 ? "the prompt cache %s was saved by another runtime version"
                      : strcmp(model, f->model_path) != 0 || atol(size) != model_size(f->model_path)
                          ? "the prompt cache %s was saved for another model"
                          : NULL;
    char *text = NULL;
    if (!why) {
        long start = ftell(in);
        fseek(in, 0, SEEK_END);
        long len = ftell(in) - start;
        fseek(in, start, SEEK_SET);
        text = calloc((size_t)len + 1, 1);
        if (len < 0 || fread(text, 1, (size_t)len, in) != (size_t)len || count_words(text) != atoi(tokens))
            why = "the prompt cache %s is truncated or damaged";
    }
    fclose(in);
    if (why) {
        free(text);
        pc_error(why, path);
        atomic_fetch_add(&stats[S_PC_LOAD_FAILED], 1);
        return -1;
    }
    f->pc_words = text;
    atomic_fetch_add(&stats[S_PC_LOADS], 1);
    atomic_store(&stats[S_PC_LOADED_TOKENS], count_words(text));
    return 0;
}

#endif

#ifndef FAKE_RKLLM_OMIT_rkllm_release_prompt_cache
int rkllm_release_prompt_cache(LLMHandle handle) {
    Fake *f = as_fake(handle);
    if (!f) return -1;
    free(f->pc_words);
    f->pc_words = NULL;
    atomic_fetch_add(&stats[S_PC_RELEASES], 1);
    atomic_store(&stats[S_PC_LOADED_TOKENS], 0);
    return 0;
}
#endif
