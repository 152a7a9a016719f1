/* Avro binary encoding of msgspec structs, in C: the stream stage's per-record hot path.
 *
 * A Writer is built once per record schema from a program that marketpipe.codec compiles
 * from the parsed schema (nested tuples, see native_program there). Calling it with a
 * record returns the header (single-object or Confluent framing) followed by the Avro
 * body, byte-identical to fastavro.schemaless_writer and to codec.py's generated writers,
 * with the same errors: OverflowError for a long outside 64 bits or a float outside
 * single precision, ValueError for an unknown enum symbol, TypeError for a wrong type.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

enum Kind { LONG, DOUBLE, FLOAT, BOOLEAN, STRING, BYTES, ENUM, NULLABLE, ARRAY, RECORD, KIND_COUNT };

typedef struct Op {
    int kind;
    PyObject *name;    /* a record field: the attribute read (owned), else NULL */
    PyObject *symbols; /* ENUM: dict symbol -> index (owned: a copy of the program's) */
    PyObject *label;   /* ENUM: the enum's name, for the error (owned) */
    int null_index;    /* NULLABLE: the branch index of null in the schema */
    Py_ssize_t count;  /* RECORD: fields; NULLABLE and ARRAY: 1 */
    struct Op *children;
} Op;

typedef struct {
    char *data;
    Py_ssize_t len, cap;
    char inline_data[512];
} Buffer;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *header; /* bytes */
    Op root;
} Writer;

/* -- the buffer --------------------------------------------------------------------- */

static int grow(Buffer *b, Py_ssize_t more) {
    Py_ssize_t need = b->len + more;
    if (need <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2 > need ? b->cap * 2 : need;
    char *data = b->data == b->inline_data ? PyMem_Malloc(cap) : PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->data == b->inline_data) memcpy(data, b->inline_data, b->len);
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(Buffer *b, const char *bytes, Py_ssize_t n) {
    if (grow(b, n) < 0) return -1;
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    return 0;
}

static int put_varint(Buffer *b, uint64_t n) {
    if (grow(b, 10) < 0) return -1;
    unsigned char *p = (unsigned char *)b->data + b->len;
    while (n >= 0x80) {
        *p++ = (unsigned char)(n | 0x80);
        n >>= 7;
    }
    *p++ = (unsigned char)n;
    b->len = (char *)p - b->data;
    return 0;
}

static int put_long(Buffer *b, long long v) {
    return put_varint(b, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63)); /* zigzag */
}

/* -- encoding a value ----------------------------------------------------------------- */

static int write_value(const Op *op, PyObject *value, Buffer *b);

static int write_long(PyObject *value, Buffer *b) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        PyErr_Format(PyExc_OverflowError, "%R does not fit in an Avro long", value);
        return -1;
    }
    if (v == -1 && PyErr_Occurred()) return -1;
    return put_long(b, v);
}

static int write_double(PyObject *value, Buffer *b, int width) {
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    if (grow(b, 8) < 0) return -1;
    int failed = width == 8 ? PyFloat_Pack8(v, b->data + b->len, 1) : PyFloat_Pack4(v, b->data + b->len, 1);
    if (failed) return -1;
    b->len += width;
    return 0;
}

static int write_string(PyObject *value, Buffer *b) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "an Avro string needs a str, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(value, &n);
    if (utf8 == NULL) return -1;
    if (put_long(b, n) < 0) return -1;
    return put(b, utf8, n);
}

static int write_bytes(PyObject *value, Buffer *b) {
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) return -1;
    int result = put_long(b, view.len) < 0 ? -1 : put(b, view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

static int write_enum(const Op *op, PyObject *value, Buffer *b) {
    PyObject *index = PyDict_GetItemWithError(op->symbols, value); /* borrowed */
    if (index == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%R is not a symbol of enum %U", value, op->label);
        return -1;
    }
    return put_long(b, PyLong_AsLongLong(index));
}

static int write_array(const Op *op, PyObject *value, Buffer *b) {
    PyObject *items = PySequence_Fast(value, "an Avro array needs a sequence");
    if (items == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    PyObject **values = PySequence_Fast_ITEMS(items);
    int result = 0;
    if (n > 0) {
        result = put_long(b, n);
        for (Py_ssize_t i = 0; result == 0 && i < n; i++) result = write_value(op->children, values[i], b);
    }
    Py_DECREF(items);
    if (result < 0) return -1;
    return put(b, "", 1); /* the block count 0 that ends the array */
}

static int write_record(const Op *op, PyObject *record, Buffer *b) {
    for (Py_ssize_t i = 0; i < op->count; i++) {
        const Op *field = &op->children[i];
        PyObject *value = PyObject_GetAttr(record, field->name);
        if (value == NULL) return -1;
        int result = write_value(field, value, b);
        Py_DECREF(value);
        if (result < 0) return -1;
    }
    return 0;
}

static int write_value(const Op *op, PyObject *value, Buffer *b) {
    switch (op->kind) {
    case LONG:
        return write_long(value, b);
    case DOUBLE:
        return write_double(value, b, 8);
    case FLOAT:
        return write_double(value, b, 4);
    case BOOLEAN: {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) return -1;
        return put(b, truth ? "\x01" : "\x00", 1);
    }
    case STRING:
        return write_string(value, b);
    case BYTES:
        return write_bytes(value, b);
    case ENUM:
        return write_enum(op, value, b);
    case NULLABLE:
        if (value == Py_None) return put_long(b, op->null_index);
        if (put_long(b, 1 - op->null_index) < 0) return -1;
        return write_value(op->children, value, b);
    case ARRAY:
        return write_array(op, value, b);
    default:
        return write_record(op, value, b);
    }
}

/* -- building the program ------------------------------------------------------------- */

static void clear_op(Op *op) {
    Py_CLEAR(op->name);
    Py_CLEAR(op->symbols);
    Py_CLEAR(op->label);
    if (op->children != NULL) {
        for (Py_ssize_t i = 0; i < op->count; i++) clear_op(&op->children[i]);
        PyMem_Free(op->children);
        op->children = NULL;
    }
}

static int build_op(Op *op, PyObject *spec);

static int build_children(Op *op, Py_ssize_t count) {
    op->children = PyMem_Calloc(count, sizeof(Op));
    if (op->children == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    op->count = count;
    return 0;
}

/* spec: (kind,) | (ENUM, {symbol: index}, name) | (NULLABLE, null_index, spec)
 *     | (ARRAY, spec) | (RECORD, ((field_name, spec), ...)) */
static int build_op(Op *op, PyObject *spec) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 1) {
        PyErr_SetString(PyExc_TypeError, "a writer program step is a non-empty tuple");
        return -1;
    }
    Py_ssize_t size = PyTuple_GET_SIZE(spec);
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
    if (kind == -1 && PyErr_Occurred()) return -1;
    if (kind < 0 || kind >= KIND_COUNT) {
        PyErr_Format(PyExc_ValueError, "unknown writer program step %ld", kind);
        return -1;
    }
    op->kind = (int)kind;
    if (kind == ENUM && size == 3 && PyDict_Check(PyTuple_GET_ITEM(spec, 1))) {
        op->symbols = PyDict_Copy(PyTuple_GET_ITEM(spec, 1));
        op->label = PyObject_Str(PyTuple_GET_ITEM(spec, 2));
        return op->symbols == NULL || op->label == NULL ? -1 : 0;
    }
    if (kind == NULLABLE && size == 3) {
        op->null_index = PyObject_IsTrue(PyTuple_GET_ITEM(spec, 1)) ? 1 : 0;
        return build_children(op, 1) < 0 ? -1 : build_op(op->children, PyTuple_GET_ITEM(spec, 2));
    }
    if (kind == ARRAY && size == 2)
        return build_children(op, 1) < 0 ? -1 : build_op(op->children, PyTuple_GET_ITEM(spec, 1));
    if (kind == RECORD && size == 2 && PyTuple_Check(PyTuple_GET_ITEM(spec, 1))) {
        PyObject *fields = PyTuple_GET_ITEM(spec, 1);
        if (build_children(op, PyTuple_GET_SIZE(fields)) < 0) return -1;
        for (Py_ssize_t i = 0; i < op->count; i++) {
            PyObject *field = PyTuple_GET_ITEM(fields, i);
            if (!PyTuple_Check(field) || PyTuple_GET_SIZE(field) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(field, 0))) {
                PyErr_SetString(PyExc_TypeError, "a record field is a (name, step) tuple");
                return -1;
            }
            op->children[i].name = Py_NewRef(PyTuple_GET_ITEM(field, 0));
            PyUnicode_InternInPlace(&op->children[i].name);
            if (build_op(&op->children[i], PyTuple_GET_ITEM(field, 1)) < 0) return -1;
        }
        return 0;
    }
    if (kind <= BYTES && size == 1) return 0;
    PyErr_Format(PyExc_ValueError, "malformed writer program step %R", spec);
    return -1;
}

/* -- the Writer type ------------------------------------------------------------------ */

static PyObject *writer_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Writer *self = (Writer *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a Writer takes one record");
        return NULL;
    }
    Buffer b = {.len = 0, .cap = sizeof(b.inline_data)};
    b.data = b.inline_data;
    PyObject *result = NULL;
    if (put(&b, PyBytes_AS_STRING(self->header), PyBytes_GET_SIZE(self->header)) == 0
        && write_value(&self->root, args[0], &b) == 0)
        result = PyBytes_FromStringAndSize(b.data, b.len);
    if (b.data != b.inline_data) PyMem_Free(b.data);
    return result;
}

static PyObject *writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"program", "header", NULL};
    PyObject *program, *header = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|S", keywords, &program, &header)) return NULL;
    Writer *self = (Writer *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = writer_vectorcall;
    self->header = header != NULL ? Py_NewRef(header) : PyBytes_FromStringAndSize("", 0);
    if (self->header == NULL || build_op(&self->root, program) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void writer_dealloc(Writer *self) {
    clear_op(&self->root);
    Py_CLEAR(self->header);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "marketpipe._avro_writer.Writer",
    .tp_doc = PyDoc_STR("Writer(program, header=b''): call it with a record for header + Avro body."),
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = writer_new,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Writer, vectorcall),
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "marketpipe._avro_writer",
    .m_doc = PyDoc_STR("Avro binary encoding of msgspec structs (see marketpipe.codec)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__avro_writer(void) {
    if (PyType_Ready(&WriterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static const char *names[] = {"LONG", "DOUBLE", "FLOAT", "BOOLEAN", "STRING", "BYTES", "ENUM", "NULLABLE", "ARRAY", "RECORD"};
    for (int kind = 0; kind < KIND_COUNT; kind++) {
        if (PyModule_AddIntConstant(m, names[kind], kind) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
