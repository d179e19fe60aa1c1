/* A C plugin for the tests, written against vigil_plugin.h: it comes online, and its IsAlive
 * answers a status the ABI does not define, with a message that is not UTF-8. Built with
 * -DABI=N it claims ABI version N instead. */
#include <stdio.h>
#include "vigil_plugin.h"

#ifndef ABI
#define ABI VIGIL_PLUGIN_ABI_VERSION
#endif

static int instance;

static void *odd_open(const vigil_open_context *ctx, char *msg, size_t len) {
    (void)ctx; (void)msg; (void)len;
    return &instance;
}

static vigil_status odd_online(void *i, char *msg, size_t len) {
    (void)i; (void)msg; (void)len;
    return VIGIL_OK;
}

static vigil_status odd_is_alive(void *i, char *msg, size_t len) {
    (void)i;
    snprintf(msg, len, "\xff\xfe garbage");
    return 42;
}

static const vigil_plugin_table table = {
    ABI, sizeof(vigil_plugin_table), "odd", "answers garbage", "[]",
    odd_open, NULL, odd_online, NULL, NULL, NULL, odd_is_alive, NULL,
};

const vigil_plugin_table *vigil_plugin_entry(void) { return &table; }
