/* Kiln's Lua front end: `lua [-v] [-e CODE]... [SCRIPT [ARGS...]]`.
 * Runs each -e chunk, then SCRIPT with its arguments in the global table
 * `arg` (arg[0] is the script, arg[1]... its arguments), with Lua's
 * standard libraries; with neither, runs the chunk read from standard
 * input. An error prints `lua: ` and the message with a traceback and
 * ends with status 1; os.exit(n) ends with n. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

static int with_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(an error object that is not a string)", 1);
    return 1;
}

/* Calls the function under `nargs` arguments on the stack, with a
 * traceback on error. */
static int call(lua_State *L, int nargs)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, with_traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    return status;
}

static int report(lua_State *L, int status)
{
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "lua: %s\n", msg ? msg : "(no message)");
        fflush(stderr);
    }
    return status;
}

int main(int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "lua: not enough memory for a Lua state\n");
        return 1;
    }
    luaL_openlibs(L);
    int i = 1, ran = 0;
    while (i < argc && argv[i][0] == '-' && argv[i][1] != '\0') {
        if (strcmp(argv[i], "-e") == 0 && i + 1 < argc) {
            const char *code = argv[i + 1];
            if (report(L, luaL_loadbuffer(L, code, strlen(code), "=(command line)")) ||
                report(L, call(L, 0)))
                return 1;
            ran = 1;
            i += 2;
        } else if (strcmp(argv[i], "-v") == 0) {
            printf("%s\n", LUA_COPYRIGHT);
            ran = 1;
            i++;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else {
            fprintf(stderr, "lua: unknown option %s\nusage: lua [-v] [-e CODE]... [SCRIPT [ARGS...]]\n", argv[i]);
            return 1;
        }
    }
    if (i >= argc && ran)
        return 0;
    /* arg: the script at 0, its arguments from 1, what came before below. */
    lua_createtable(L, argc > i ? argc - i - 1 : 0, i + 1);
    for (int j = 0; j < argc; j++) {
        lua_pushstring(L, argv[j]);
        lua_rawseti(L, -2, j - i);
    }
    lua_setglobal(L, "arg");
    const char *script = i < argc ? argv[i] : NULL; /* NULL: standard input */
    if (report(L, luaL_loadfile(L, script)))
        return 1;
    int nargs = 0;
    for (int j = i + 1; j < argc; j++, nargs++)
        lua_pushstring(L, argv[j]);
    if (report(L, call(L, nargs)))
        return 1;
    lua_close(L);
    return 0;
}
