/* The variadic part of nbdkit's plugin ABI.
 *
 * Stable Rust cannot define C variadic functions or take a va_list, so
 * nbdkit_error, nbdkit_verror, nbdkit_debug, nbdkit_vdebug,
 * nbdkit_printf_intern and nbdkit_vprintf_intern are defined here: each
 * formats its message with vasprintf and hands the finished string to a
 * Rust function in src/plugins/cabi/exports.rs, which does the work.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define PUBLIC __attribute__((__visibility__("default")))

extern void nbdkit_rs_error (const char *msg);
extern void nbdkit_rs_debug (const char *msg);
extern int nbdkit_rs_verbose (void);
extern const char *nbdkit_strdup_intern (const char *str);

PUBLIC void
nbdkit_verror (const char *fs, va_list args)
{
  int err = errno;
  char *msg = NULL;

  if (vasprintf (&msg, fs, args) >= 0) {
    nbdkit_rs_error (msg);
    free (msg);
  }
  else
    nbdkit_rs_error (fs);
  errno = err;
}

PUBLIC void
nbdkit_error (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  nbdkit_verror (fs, args);
  va_end (args);
}

PUBLIC void
nbdkit_vdebug (const char *fs, va_list args)
{
  int err = errno;
  char *msg = NULL;

  if (!nbdkit_rs_verbose ())
    return;
  if (vasprintf (&msg, fs, args) >= 0) {
    nbdkit_rs_debug (msg);
    free (msg);
  }
  errno = err;
}

PUBLIC void
nbdkit_debug (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  nbdkit_vdebug (fs, args);
  va_end (args);
}

PUBLIC const char *
nbdkit_vprintf_intern (const char *fs, va_list args)
{
  char *str = NULL;
  const char *ret;

  if (vasprintf (&str, fs, args) < 0) {
    nbdkit_error ("asprintf: %m");
    return NULL;
  }
  ret = nbdkit_strdup_intern (str);
  free (str);
  return ret;
}

PUBLIC const char *
nbdkit_printf_intern (const char *fs, ...)
{
  va_list args;
  const char *ret;

  va_start (args, fs);
  ret = nbdkit_vprintf_intern (fs, args);
  va_end (args);
  return ret;
}

/* Referenced from Rust so the linker keeps this object in the binary. */
void
nbdkit_rs_shim_anchor (void)
{
}
