/* One executable per backend; the same tests for every backend.
 * PX_TEST_FILTER=pattern runs only the tests whose names match it (CMocka's
 * filter: '*' and '?' wildcards). */
#include "conf.h"

#define PX_TEST(name)                                                          \
  cmocka_unit_test_setup_teardown(name, test_setup, test_teardown),

int main(void) {
  const struct CMUnitTest tests[] = {
#include "list.h"
  };
  const char *filter = getenv("PX_TEST_FILTER");
  if (filter != NULL && filter[0] != '\0')
    cmocka_set_test_filter(filter);
  return cmocka_run_group_tests_name("conformance_" PX_TEST_BACKEND, tests,
                                     NULL, NULL);
}
