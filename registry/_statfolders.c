/* list_folders: the sub-folders of an open folder; stat_folders: size and mtime of the same
 * files in many folders, stat-ed by threads. Both release the GIL for their system calls.
 * The numbers come out as `array('q')` bytes, the layout `_scan._stat_into` appends. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FOLDERS_PER_THREAD 256
#define PATH_BUF 4096 /* a longer "name/file" fails as ENAMETOOLONG would */

typedef struct {
    int dirfd;
    const char *text;      /* the names, then the files, each followed by a NUL */
    const size_t *at;      /* where string i starts in `text`; one more for the end */
    Py_ssize_t count;      /* folders */
    Py_ssize_t files;      /* files per folder */
    int64_t *out;          /* 2 * files numbers per folder */
} Job;

typedef struct {
    const Job *job;
    Py_ssize_t lo, hi;     /* the folders of this part */
    Py_ssize_t failed;     /* the first folder of the part with an error, or -1 */
    pthread_t thread;
    int started;
} Part;

static void stat_part(Part *part) {
    const Job *job = part->job;
    char path[PATH_BUF];
    part->failed = -1;
    for (Py_ssize_t i = part->lo; i < part->hi; i++) {
        size_t len = job->at[i + 1] - job->at[i] - 1;
        int64_t *out = job->out + 2 * job->files * i;
        for (Py_ssize_t f = 0; f < job->files; f++, out += 2) {
            size_t flen = job->at[job->count + f + 1] - job->at[job->count + f];
            struct stat st;
            if (len + 1 + flen > sizeof path) {
                part->failed = i;
                return;
            }
            memcpy(path, job->text + job->at[i], len);
            path[len] = '/';
            memcpy(path + len + 1, job->text + job->at[job->count + f], flen);
            if (fstatat(job->dirfd, path, &st, 0) == 0) {
#ifdef __APPLE__
                struct timespec mtime = st.st_mtimespec;
#else
                struct timespec mtime = st.st_mtim;
#endif
                out[0] = (int64_t)st.st_size;
                out[1] = (int64_t)mtime.tv_sec * 1000000000 + mtime.tv_nsec;
            } else if (errno == ENOENT || errno == ENOTDIR) {
                out[0] = out[1] = -1;
            } else {
                part->failed = i;
                return;
            }
        }
    }
}

static void *run_part(void *part) {
    stat_part(part);
    return NULL;
}

/* The bytes of `item` as the file system spells them, appended to `*text` at `*used`. */
static int append_name(PyObject *item, char **text, size_t *used, size_t *cap) {
    PyObject *encoded = NULL;
    const char *data;
    Py_ssize_t size;
    if (!PyUnicode_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "names and files must be str");
        return -1;
    }
    if (PyUnicode_IS_ASCII(item)) { /* the same bytes in any file system encoding */
        data = PyUnicode_DATA(item);
        size = PyUnicode_GET_LENGTH(item);
    } else {
        if (!(encoded = PyUnicode_EncodeFSDefault(item)))
            return -1;
        data = PyBytes_AS_STRING(encoded);
        size = PyBytes_GET_SIZE(encoded);
    }
    if (memchr(data, 0, (size_t)size)) {
        PyErr_SetString(PyExc_ValueError, "embedded null character in a name");
        Py_XDECREF(encoded);
        return -1;
    }
    if (*used + (size_t)size + 1 > *cap) {
        size_t grown = 2 * *cap + (size_t)size + 1;
        char *bigger = realloc(*text, grown);
        if (!bigger) {
            PyErr_NoMemory();
            Py_XDECREF(encoded);
            return -1;
        }
        *text = bigger;
        *cap = grown;
    }
    memcpy(*text + *used, data, (size_t)size);
    *used += (size_t)size + 1;
    (*text)[*used - 1] = '\0';
    Py_XDECREF(encoded);
    return 0;
}

static PyObject *stat_folders(PyObject *self, PyObject *args) {
    int dirfd, threads;
    PyObject *names_arg, *files, *names = NULL, *out = NULL;
    char *text = NULL;
    size_t *at = NULL, used = 0, cap = 0;
    Part *parts = NULL;
    Py_ssize_t count, nfiles, failed = -1;
    Job job;
    (void)self;
    if (!PyArg_ParseTuple(args, "iO!O!i:stat_folders", &dirfd, &PyList_Type, &names_arg,
                          &PyTuple_Type, &files, &threads))
        return NULL;
    if (dirfd < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "dirfd must be >= 0 and threads >= 1");
        return NULL;
    }
    if (!(names = PyList_AsTuple(names_arg))) /* a list changed meanwhile stays as it was */
        return NULL;
    count = PyTuple_GET_SIZE(names);
    nfiles = PyTuple_GET_SIZE(files);
    if ((nfiles && count > PY_SSIZE_T_MAX / 16 / nfiles) ||
        !(at = malloc(sizeof *at * (size_t)(count + nfiles + 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count + nfiles; i++) {
        at[i] = used;
        PyObject *item = i < count ? PyTuple_GET_ITEM(names, i) : PyTuple_GET_ITEM(files, i - count);
        if (append_name(item, &text, &used, &cap) < 0)
            goto done;
    }
    at[count + nfiles] = used;
    if (!(out = PyBytes_FromStringAndSize(NULL, 16 * count * nfiles)))
        goto done;
    if (threads > count / FOLDERS_PER_THREAD) /* a thread costs more than a few stats */
        threads = count >= 2 * FOLDERS_PER_THREAD ? (int)(count / FOLDERS_PER_THREAD) : 1;
    if (!(parts = calloc((size_t)threads, sizeof *parts))) {
        PyErr_NoMemory();
        Py_CLEAR(out);
        goto done;
    }
    job = (Job){dirfd, text, at, count, nfiles, (int64_t *)PyBytes_AS_STRING(out)};
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < threads; t++) {
        parts[t].job = &job;
        parts[t].lo = count * t / threads;
        parts[t].hi = count * (t + 1) / threads;
        /* the calling thread takes part 0, and any part no thread could be started for */
        parts[t].started = t > 0 && pthread_create(&parts[t].thread, NULL, run_part, &parts[t]) == 0;
    }
    for (int t = 0; t < threads; t++)
        if (!parts[t].started)
            stat_part(&parts[t]);
    for (int t = 0; t < threads; t++)
        if (parts[t].started)
            pthread_join(parts[t].thread, NULL);
    Py_END_ALLOW_THREADS
    for (int t = threads - 1; t >= 0; t--)
        if (parts[t].failed >= 0)
            failed = parts[t].failed;
done:
    free(parts);
    free(at);
    free(text);
    Py_DECREF(names);
    if (!out)
        return NULL;
    return Py_BuildValue("(Nn)", out, failed);
}

/* Names of the sub-folders (links to folders too, as os.scandir's is_dir() sees them) of
 * `dirfd`, in directory order, hidden ones left out: NUL-terminated in `*text`. The number of
 * names, or -1 with errno set. Runs without the GIL. */
static Py_ssize_t read_folders(int dirfd, char **text, size_t *used) {
    size_t cap = 0;
    Py_ssize_t count = 0;
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd < 0 ? NULL : fdopendir(fd);
    struct dirent *entry;
    if (!dir) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    for (;;) {
        errno = 0; /* readdir tells the end from an error by errno alone */
        if (!(entry = readdir(dir)))
            break;
        size_t len = strlen(entry->d_name);
        struct stat st;
        if (entry->d_name[0] == '.')
            continue;
        if (entry->d_type != DT_DIR) {
            if (entry->d_type != DT_UNKNOWN && entry->d_type != DT_LNK)
                continue;
            if (fstatat(dirfd, entry->d_name, &st, 0) != 0 || !S_ISDIR(st.st_mode))
                continue;
        }
        if (*used + len + 1 > cap) {
            size_t grown = 2 * cap + len + 4096;
            char *bigger = realloc(*text, grown);
            if (!bigger) {
                closedir(dir);
                errno = ENOMEM;
                return -1;
            }
            *text = bigger;
            cap = grown;
        }
        memcpy(*text + *used, entry->d_name, len + 1);
        *used += len + 1;
        count++;
    }
    if (errno) {
        int saved = errno;
        closedir(dir);
        errno = saved;
        return -1;
    }
    closedir(dir);
    return count;
}

static PyObject *list_folders(PyObject *self, PyObject *args) {
    int dirfd, saved = 0;
    char *text = NULL;
    size_t used = 0;
    Py_ssize_t count;
    PyObject *out = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "i:list_folders", &dirfd))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    count = read_folders(dirfd, &text, &used);
    saved = errno;
    Py_END_ALLOW_THREADS
    if (count < 0) {
        free(text);
        errno = saved;
        return saved == ENOMEM ? PyErr_NoMemory() : PyErr_SetFromErrno(PyExc_OSError);
    }
    if ((out = PyList_New(count))) {
        const char *at = text;
        for (Py_ssize_t i = 0; i < count; i++) {
            size_t len = strlen(at);
            PyObject *name = PyUnicode_DecodeFSDefaultAndSize(at, (Py_ssize_t)len);
            if (!name) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, name);
            at += len + 1;
        }
    }
    free(text);
    return out;
}

static PyMethodDef methods[] = {
    {"list_folders", list_folders, METH_VARARGS,
     "list_folders(dirfd) -> names\n\n"
     "The sub-folders of the open folder `dirfd` (links to folders too), in directory\n"
     "order, hidden ones left out."},
    {"stat_folders", stat_folders, METH_VARARGS,
     "stat_folders(dirfd, names, files, threads) -> (numbers, failed)\n\n"
     "Size and mtime (ns) of each of `files` in each folder of `names` under the open\n"
     "folder `dirfd`, as native int64 pairs (-1, -1 for a file that is not there), stat-ed\n"
     "by `threads` threads. `failed` is the first folder with any other error, or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_statfolders", "List folders and stat the files in each of them.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__statfolders(void) { return PyModule_Create(&module); }
