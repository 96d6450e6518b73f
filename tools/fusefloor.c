/* The C FUSE floor of `tools/bench.py --only floors`: the least a libfuse 3 high-level filesystem can do to
 * serve a folder read-only — lookups by lstat, a descriptor per open, pread straight into libfuse's buffer —
 * on the same libfuse, with the same request size and thread model as the mixvfs daemon. Whatever the mixvfs
 * daemon costs beyond this is Python, its checks and its bookkeeping. (bindfs, the other floor, is built on
 * libfuse 2 on Debian 12: 128 KiB requests.)
 *
 *   cc -O2 -Wall -o fusefloor tools/fusefloor.c $(pkg-config --cflags --libs fuse3)
 *   fusefloor SOURCE MOUNTPOINT [-f] [-o ro]       (fusermount3 -u MOUNTPOINT to stop)
 */
#define FUSE_USE_VERSION 31
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char source[PATH_MAX];

static int real(char *out, const char *path) {
    int n = snprintf(out, PATH_MAX, "%s%s", source, path);
    return n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

static void *floor_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 0;
    cfg->kernel_cache = 0; /* like the daemon's fresh mount: pages come through read */
    return NULL;
}

static int floor_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    if (fi != NULL)
        return fstat((int)fi->fh, st) == 0 ? 0 : -errno;
    int r = real(p, path);
    if (r)
        return r;
    return lstat(p, st) == 0 ? 0 : -errno;
}

static int floor_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                         enum fuse_readdir_flags flags) {
    (void)off, (void)fi, (void)flags;
    char p[PATH_MAX];
    int r = real(p, path);
    if (r)
        return r;
    DIR *dir = opendir(p);
    if (dir == NULL)
        return -errno;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
        if (fill(buf, entry->d_name, NULL, 0, 0))
            break;
    closedir(dir);
    return 0;
}

static int floor_open(const char *path, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    int r = real(p, path);
    if (r)
        return r;
    if ((fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int floor_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int floor_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static const struct fuse_operations ops = {
    .init = floor_init,
    .getattr = floor_getattr,
    .readdir = floor_readdir,
    .open = floor_open,
    .read = floor_read,
    .release = floor_release,
};

int main(int argc, char *argv[]) {
    if (argc < 3 || realpath(argv[1], source) == NULL) {
        fprintf(stderr, "usage: %s SOURCE MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    argv[1] = argv[0]; /* fuse_main sees: prog MOUNTPOINT [options] */
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
