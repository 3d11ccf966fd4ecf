# A second, independent implementation of the document digest defined in
# crates/electric-core/src/digest.rs (digest version 1), for checking the definition and as a
# model for other languages. Needs the `xxhash` package (pip install xxhash).
# Usage: python3 docs/tools/digest_ref.py '{"a": [1, "two", 3.5, null, true]}'   -> 160c99d44ed30b4b
import json, struct, sys, xxhash
K=[0x243f6a8885a308d3,0x13198a2e03707344,0xa4093822299f31d0,0x082efa98ec4e6c89,0x452821e638d01377,
   0xbe5466cf34e90c6c,0xc0ac29b7c97c50dd,0x3f84d5b5b5470917,0x9216d5d98979fb1b,0xd1310ba698dfb5ac]
M=(1<<64)-1
def mum(a,b):
    r=(a&M)*(b&M); return (r&M)^(r>>64)
def x(b): return xxhash.xxh3_64_intdigest(b)
def child(p,tok): return mum(p^K[1], x(tok)^K[2])
def term(p,n): return mum(p^K[1], n^K[9])
def num(v):
    if isinstance(v,int):
        if 0<=v<2**64: return mum(v^K[3],K[8])
        if -2**63<=v<0: return mum((v&M)^K[4],K[8])
        v=float(v)
    if v==int(v) and 0<=v<2**64: return mum(int(v)^K[3],K[8])
    if v==int(v) and -2**63<=v<0: return mum((int(v)&M)^K[4],K[8])
    return mum(struct.unpack('<Q',struct.pack('<d',v))[0]^K[5],K[8])
def sub(p,v):
    if v is None: return term(p,K[3])
    if v is True: return term(p,K[4])
    if v is False: return term(p,K[5])
    if isinstance(v,(int,float)): return term(p,num(v))
    if isinstance(v,str): return term(p,mum(x(v.encode())^K[8],K[9]))
    if isinstance(v,list):
        s=term(p,K[7])
        for i,it in enumerate(v): s=(s+sub(child(p,str(i).encode()),it))&M
        return s
    s=term(p,K[6])
    for k,it in v.items(): s=(s+sub(child(p,k.encode()),it))&M
    return s
print('%016x'%sub(K[0],json.loads(sys.argv[1])))
