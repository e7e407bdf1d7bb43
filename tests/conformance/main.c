/* One executable; the same tests for every backend.  The backend runs as
 * a program's would: PX_BACKEND names it, or px chooses. */
#include "conf.h"

#define PX_TEST(name)                                                          \
  cmocka_unit_test_setup_teardown(name, test_setup, test_teardown),

/* An argument, or else PX_TEST_FILTER, runs only the tests whose names
 * match it (CMocka's filter: '*' and '?' are wildcards), e.g.
 * conformance 'smallest_queue_*'. */
int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : getenv("PX_TEST_FILTER");
  if (filter != NULL && filter[0] != '\0')
    cmocka_set_test_filter(filter);
  const struct CMUnitTest tests[] = {
#include "list.h"
  };
  /* The group is named after the backend the run expects, when told. */
  char group[64];
  const char *expect = getenv("PX_TEST_BACKEND");
  snprintf(group, sizeof(group), "conformance_%s",
           expect != NULL && expect[0] != '\0' ? expect : "default");
  return cmocka_run_group_tests_name(group, tests, NULL, NULL);
}
