/* An op is embedded in the caller's structs: its size is part of the API. */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "px.h"

_Static_assert(sizeof(px_op) <= 128, "px_op must fit in 128 bytes");

static void op_is_128_bytes_on_64_bit(void **state) {
  (void)state;
  assert_true(sizeof(px_op) <= 128);
  if (sizeof(void *) == 8)
    assert_int_equal(sizeof(px_op), 128);
}

/* "Layout-compatible with struct iovec on POSIX" (px.h). */
static void iov_has_the_iovec_layout(void **state) {
  (void)state;
  assert_int_equal(offsetof(px_iov, base), 0);
  assert_int_equal(offsetof(px_iov, len), sizeof(void *));
  assert_int_equal(sizeof(px_iov), sizeof(void *) + sizeof(size_t));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(op_is_128_bytes_on_64_bit),
      cmocka_unit_test(iov_has_the_iovec_layout),
  };
  return cmocka_run_group_tests_name("unit_op_size", tests, NULL, NULL);
}
