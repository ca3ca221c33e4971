/* The only code that includes mpi.h (compiled by build.rs with the `mpi` feature): MPI handles
 * differ between implementations, so Rust sees them only as opaque pointers. */
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static void finalize_at_exit(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

/* MPI_Init_thread when the host has not initialised MPI itself (then MPI_Finalize runs at exit). */
int adpo_mpi_shim_ensure_init(void) {
    int initialized = 0, provided = 0;
    MPI_Initialized(&initialized);
    if (initialized) return MPI_SUCCESS;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    if (rc == MPI_SUCCESS) atexit(finalize_at_exit);
    return rc;
}

/* A private duplicate of *comm (MPI_COMM_WORLD when comm is NULL), returning errors as codes. */
int adpo_mpi_shim_comm_dup(const void *comm, void **out) {
    MPI_Comm source = comm ? *(const MPI_Comm *)comm : MPI_COMM_WORLD;
    MPI_Comm *dup = malloc(sizeof *dup);
    if (!dup) return MPI_ERR_NO_MEM;
    int rc = MPI_Comm_dup(source, dup);
    if (rc != MPI_SUCCESS) {
        free(dup);
        return rc;
    }
    MPI_Comm_set_errhandler(*dup, MPI_ERRORS_RETURN);
    *out = dup;
    return MPI_SUCCESS;
}

int adpo_mpi_shim_rank_size(void *comm, int *rank, int *size) {
    int rc = MPI_Comm_rank(*(MPI_Comm *)comm, rank);
    return rc != MPI_SUCCESS ? rc : MPI_Comm_size(*(MPI_Comm *)comm, size);
}

/* In-place sum of count floats (bits 32) or doubles (bits 64), in chunks MPI's int count holds. */
int adpo_mpi_shim_allreduce_sum(void *comm, void *buf, size_t count, int bits) {
    MPI_Datatype type = bits == 64 ? MPI_DOUBLE : MPI_FLOAT;
    char *p = buf;
    while (count > 0) {
        int n = count > (size_t)INT_MAX ? INT_MAX : (int)count;
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, n, type, MPI_SUM, *(MPI_Comm *)comm);
        if (rc != MPI_SUCCESS) return rc;
        p += (size_t)n * (size_t)(bits / 8);
        count -= (size_t)n;
    }
    return MPI_SUCCESS;
}

void adpo_mpi_shim_comm_free(void *comm) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free((MPI_Comm *)comm);
    free(comm);
}

void adpo_mpi_shim_error_string(int code, char *out, int capacity) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    text[len < MPI_MAX_ERROR_STRING ? len : MPI_MAX_ERROR_STRING - 1] = '\0';
    strncpy(out, text, (size_t)capacity - 1);
    out[capacity - 1] = '\0';
}
