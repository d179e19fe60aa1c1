/*
 * vigil_plugin.h: the C ABI of a Vigil resource-type plugin (the seed's resource DLL).
 *
 * A plugin is a shared library that exports one function, vigil_plugin_entry, returning a
 * pointer to a static function table. Vigil loads plugins only inside an RHS process (never
 * in the agent), checks abi_version before it touches anything else, and calls the entry
 * points one at a time per resource, each on a thread under the deadlock watchdog.
 *
 * Every entry point may be NULL: Vigil then treats it as unsupported, which is a no-op that
 * succeeds (a NULL looks_alive or is_alive answers "alive").
 *
 * Messages: entry points that take (char *msg, size_t msg_len) may write a NUL-terminated
 * UTF-8 reason of at most msg_len bytes (including the NUL) into msg; Vigil shows it in
 * status and the cluster log. msg is zeroed before each call.
 */
#ifndef VIGIL_PLUGIN_H
#define VIGIL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change to this file. */
#define VIGIL_PLUGIN_ABI_VERSION 1u

/* The name of the one exported symbol. */
#define VIGIL_PLUGIN_ENTRY "vigil_plugin_entry"

typedef int32_t vigil_status;
/* Done: online/offline finished, a check found the resource alive. */
#define VIGIL_OK 0
/* online/offline: still working; Vigil calls the same entry point again (about every
 * 50 ms) until it answers something else. The entry point must therefore be idempotent. */
#define VIGIL_PENDING 1
/* The resource failed (or the action did). Restarted by the restart policy. */
#define VIGIL_FAILED 2
/* Checks only: the resource was stopped outside the cluster on purpose; not restarted. */
#define VIGIL_STOPPED 3
/* The configuration is wrong on this node: not retried here, the group fails over. */
#define VIGIL_CONFIG_ERROR 4

/* One resource parameter (both strings NUL-terminated UTF-8). */
typedef struct vigil_param {
    const char *name;
    const char *value;
} vigil_param;

/* What open is told about the resource. */
typedef struct vigil_open_context {
    const char *resource;      /* the resource's name */
    const char *node;          /* this node's name */
    uint64_t epoch;            /* the group's ownership epoch */
    const vigil_param *params; /* every parameter set on the resource */
    size_t n_params;
} vigil_open_context;

typedef struct vigil_plugin_table {
    uint32_t abi_version;    /* VIGIL_PLUGIN_ABI_VERSION */
    uint32_t table_size;     /* sizeof(vigil_plugin_table) */
    const char *name;        /* the type's name: [a-z0-9_-]+, not "process", not "ocf:..." */
    const char *description; /* one line */
    /* The parameter schema as a JSON array of objects:
     *   {"name": "...", "kind": "string"|"integer"|"bool", "required": true|false,
     *    "default": "..." or null, "description": "..."}
     * Vigil checks resources against it when they are created or changed. */
    const char *schema_json;

    /* Open: parse the parameters and return an instance (no side effects yet), or NULL
     * with a reason in msg. */
    void *(*open)(const vigil_open_context *ctx, char *msg, size_t msg_len);
    void (*close)(void *instance);
    vigil_status (*online)(void *instance, char *msg, size_t msg_len);
    vigil_status (*offline)(void *instance, char *msg, size_t msg_len);
    /* Stop now, whatever it takes. */
    void (*terminate)(void *instance);
    /* The quick check (LooksAlive) and the thorough one (IsAlive). */
    vigil_status (*looks_alive)(void *instance, char *msg, size_t msg_len);
    vigil_status (*is_alive)(void *instance, char *msg, size_t msg_len);
    /* A type-specific request (the seed's ResourceControl); the reply goes to msg. */
    vigil_status (*control)(void *instance, const char *request, char *msg, size_t msg_len);
} vigil_plugin_table;

/* The one exported symbol. */
const vigil_plugin_table *vigil_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* VIGIL_PLUGIN_H */
