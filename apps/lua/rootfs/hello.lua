-- A Lua script from the initrd: strings, tables, floating point,
-- coroutines and files.
print(("Hello from %s in Kiln!"):format(_VERSION))
print("arguments:", table.concat(arg, " ", 1))

local squares = {}
for i = 1, 10 do squares[#squares + 1] = i * i end
print("squares:", table.concat(squares, ","))
print(("pi ~ %.6f, 2^0.5 = %.4f"):format(math.pi, 2 ^ 0.5))

local gen = coroutine.wrap(function()
  local a, b = 0, 1
  while true do coroutine.yield(a); a, b = b, a + b end
end)
local fib = {}
for _ = 1, 12 do fib[#fib + 1] = gen() end
print("fibonacci:", table.concat(fib, " "))

local f = assert(io.open("/lua.txt", "w"))
for i = 1, 3 do f:write("line ", i, "\n") end
f:close()
local n = 0
for line in io.lines("/lua.txt") do n = n + 1 end
print("lines read back:", n)
print("HOME is", os.getenv("HOME") or "(unset)")
