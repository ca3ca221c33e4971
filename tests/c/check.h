/* Tiny assertion helpers for the C tests of adpo (one translation unit per test program).
 *
 *   CHECK(cond)                      the condition holds
 *   CHECK_NEAR(a, b, tol)            |a - b| <= tol (absolute); NaN never passes
 *   CHECK_CLOSE(a, b, rtol)          |a - b| <= rtol * |b| + 1e-12 (relative to the expected b)
 *   CHECK_STATUS(expr, status, sub)  runs expr with a fresh `adpo_error *err = NULL` in scope
 *                                    (pass &err as the call's last argument), then checks the
 *                                    returned status, that err carries the same status and a
 *                                    message containing `sub` on failure (err stays NULL on
 *                                    success), and frees err.
 *   CHECK_IN_CHILD(fn, arg, what)    runs fn(arg) in a forked child and passes when it returns 0:
 *                                    a crash is reported as this check's failure instead of
 *                                    ending the suite. Call it before anything in the process
 *                                    starts a thread pool (fork copies only the calling thread).
 *   check_summary("suite")           prints "suite: N passed, M failed" as the last line and
 *                                    returns nonzero if M > 0 (use it as main's return value).
 *
 * Failures print file:line and what was compared, and the test keeps going. */
#ifndef ADPO_TEST_CHECK_H
#define ADPO_TEST_CHECK_H

#include <adpo.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int check_passed_ = 0;
static int check_failed_ = 0;

static inline int check_record_(int ok, const char *file, int line, const char *what) {
    if (ok) {
        check_passed_++;
    } else {
        check_failed_++;
        fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what);
    }
    return ok;
}

static inline int check_near_(double a, double b, double tol, const char *ea, const char *eb, const char *file,
                              int line) {
    int ok = !isnan(a) && !isnan(b) && fabs(a - b) <= tol;
    if (!check_record_(ok, file, line, "CHECK_NEAR"))
        fprintf(stderr, "     %s = %.12g, %s = %.12g, |diff| = %.3g > tol %.3g\n", ea, a, eb, b, fabs(a - b), tol);
    return ok;
}

static inline int check_status_(adpo_status got, const adpo_error *err, adpo_status want, const char *sub,
                                const char *expr, const char *file, int line) {
    const char *msg = adpo_error_message(err);
    int ok = got == want;
    if (want == ADPO_STATUS_OK) {
        ok = ok && err == NULL;
    } else {
        ok = ok && err != NULL && adpo_error_status(err) == want && strstr(msg, sub) != NULL;
    }
    if (!check_record_(ok, file, line, expr))
        fprintf(stderr, "     status %d (want %d), err %s, message \"%s\" (want it to contain \"%s\")\n", (int)got,
                (int)want, err ? "set" : "NULL", msg, sub);
    return ok;
}

#define CHECK(cond) check_record_((cond) ? 1 : 0, __FILE__, __LINE__, "CHECK(" #cond ")")
#define CHECK_NEAR(a, b, tol) check_near_((a), (b), (tol), #a, #b, __FILE__, __LINE__)
#define CHECK_CLOSE(a, b, rtol) check_near_((a), (b), (rtol) * fabs(b) + 1e-12, #a, #b, __FILE__, __LINE__)
#define CHECK_STATUS(expr, status, sub)                                                   \
    do {                                                                                  \
        adpo_error *err = NULL;                                                           \
        adpo_status check_st_ = (expr);                                                   \
        check_status_(check_st_, err, (status), (sub), #expr, __FILE__, __LINE__);        \
        adpo_error_free(err);                                                             \
    } while (0)

static inline int check_in_child_(int (*fn)(const void *), const void *arg, const char *what, const char *file,
                                  int line) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(4); /* a crash's trace */
        _exit(fn(arg));
    }
    int status = 0;
    int waited = pid > 0 && waitpid(pid, &status, 0) == pid;
    int ok = waited && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!check_record_(ok, file, line, what)) {
        if (waited && WIFSIGNALED(status))
            fprintf(stderr, "     ^ the child was killed by signal %d\n", WTERMSIG(status));
        else
            fprintf(stderr, "     ^ child exit status %d\n", waited && WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return ok;
}

#define CHECK_IN_CHILD(fn, arg, what) check_in_child_((fn), (arg), (what), __FILE__, __LINE__)

static inline int check_summary(const char *suite) {
    fflush(stdout);
    printf("%s: %d passed, %d failed\n", suite, check_passed_, check_failed_);
    fflush(stdout);
    return check_failed_ > 0 ? 1 : 0;
}

#endif /* ADPO_TEST_CHECK_H */
